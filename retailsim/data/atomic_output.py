"""Output folders that appear whole or not at all (SPEC 3.1: no stage leaves a half-written output).

A stage writes into a hidden temporary sibling of its ``--out`` folder and renames it into place when every
file is complete; on any error the temporary folder is removed and an existing ``--out`` is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from retailsim.errors import RetailSimInputError


def check_output_folder(out: Path, *, overwrite: bool, argument: str = "--out") -> None:
    """Refuse an ``--out`` that is a file, that sits under a file, or that is a non-empty folder unless
    ``overwrite`` is set."""
    if out.exists() and not out.is_dir():
        raise RetailSimInputError(f"{argument} {out} is an existing file; expected a folder to create.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RetailSimInputError(
            f"{argument} {out} already exists and is not empty; remove it, choose another folder or pass --overwrite."
        )
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RetailSimInputError(f"{argument} {out} cannot be created because {ancestor} is a file.")


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` (missing parent folders are created); on success it replaces
    ``out``, on any error it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
