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
    """Refuse an ``--out`` that is a file, or a non-empty folder unless ``overwrite`` is set."""
    if out.exists() and not out.is_dir():
        raise RetailSimInputError(f"{argument} {out} is a file; expected a folder to create.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RetailSimInputError(
            f"{argument} {out} already exists and is not empty; remove it, choose another folder or pass --overwrite."
        )
    if not out.parent.exists():
        raise RetailSimInputError(f"{argument} {out}: its parent folder {out.parent} does not exist.")


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
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
