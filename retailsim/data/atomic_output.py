"""Outputs that appear whole or not at all, that one process at a time writes, and that never destroy an input
(SPEC 3.1: no stage leaves a half-written output).

Every verb that writes goes through here:
- :func:`check_output_folder` refuses, before any work, an output that is a file, sits under a file, is a
  non-empty folder without ``--overwrite``, or is, contains or lies inside one of the verb's inputs (an
  ``--overwrite`` there would delete the input);
- :func:`output_lock` claims an output for this process (an advisory ``flock`` on a hidden sibling
  ``.<name>.lock``, released when the process ends, however it ends); a second process writing the same output
  is refused with one sentence instead of splicing its files into the first one's;
- :func:`atomic_folder` claims the folder, checks it again under the lock, and writes into a hidden temporary
  sibling that is renamed into place only when every file is complete; on any error, Ctrl-C or SIGTERM the
  temporary folder is removed and an existing output is left untouched.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

from retailsim.errors import RetailSimInputError

Inputs = Sequence[tuple[str, "os.PathLike[str] | str | None"]]  # (flag, path) of each input of the verb


def check_not_overlapping(out: Path, inputs: Inputs, argument: str = "--out", *, may_contain: bool = False) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (paths resolved, so links and
    ``.`` count); ``may_contain`` allows an output folder holding an input (a verb that never deletes it)."""
    target = Path(out).resolve()
    for flag, path in inputs:
        if path is None:
            continue
        source = Path(path).resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents and not may_contain:
            relation = "contains"
        else:
            continue
        raise RetailSimInputError(f"{argument} {out} {relation} the input {flag} {path}; writing there could destroy "
                                  f"the input, choose an output outside it.")


def check_output_folder(out: Path, *, overwrite: bool, inputs: Inputs = (), argument: str = "--out") -> None:
    """Refuse an ``--out`` that is a file, that sits under a file, that overlaps an input, or that is a
    non-empty folder unless ``overwrite`` is set."""
    out = Path(out)
    check_not_overlapping(out, inputs, argument)
    if out.exists() and not out.is_dir():
        raise RetailSimInputError(f"{argument} {out} is an existing file; expected a folder to create.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise RetailSimInputError(
            f"{argument} {out} already exists and is not empty; remove it, choose another folder or pass --overwrite."
        )
    check_creatable(out, argument)


def check_creatable(out: Path, argument: str) -> None:
    """Refuse an output whose nearest existing ancestor is a file or cannot be written."""
    ancestor = Path(out).parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RetailSimInputError(f"{argument} {out} cannot be created because {ancestor} is a file.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RetailSimInputError(f"{argument} {out} cannot be created: {ancestor} is not writable.")


def lock_path(out: Path) -> Path:
    """The claim file of ``out``, from its resolved path: a link to an output or ``.`` claims the same file."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: Path, argument: str = "--out") -> Iterator[None]:
    """Hold an exclusive claim on ``out`` for the block; a claim held by another process is refused at once."""
    check_creatable(Path(out), argument)
    path = lock_path(out)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RetailSimInputError(f"{argument} {out} cannot be created ({error.strerror or error}: "
                                      f"{error.filename or path.parent}).") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RetailSimInputError(f"{argument} {out} is being written by another RetailSim process (pid "
                                      f"{holder}); wait for it to finish or choose another output.") from None
        try:  # the holder we waited on may have removed the file: then our lock is on a stale inode
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(descriptor)


@contextlib.contextmanager
def atomic_folder(out: Path, *, overwrite: bool, inputs: Inputs = (), argument: str = "--out") -> Iterator[Path]:
    """Claim ``out``, check it (as :func:`check_output_folder`) and yield a temporary sibling (missing parent
    folders are created); on success it replaces ``out``, on any error it is removed and ``out`` is left as
    it was."""
    shown, out = Path(out), Path(out).resolve()
    with output_lock(out, argument):
        check_output_folder(shown, overwrite=overwrite, inputs=inputs, argument=argument)
        _recover(out)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        previous = out.parent / f".{out.name}.previous-{os.getpid()}"
        with _signals_held():  # the two renames happen together or not at all, whatever signal arrives
            if out.exists():
                out.rename(previous)
            try:
                staging.rename(out)
            except BaseException:
                if previous.exists():
                    previous.rename(out)
                shutil.rmtree(staging, ignore_errors=True)
                raise
        shutil.rmtree(previous, ignore_errors=True)


def _recover(out: Path) -> None:
    """Under the claim: undo what a run killed (kill -9) mid-way left beside ``out``. A hidden previous copy
    whose output is missing is put back; staging folders are removed."""
    prefix = glob.escape(f".{out.name}")
    for previous in sorted(out.parent.glob(f"{prefix}.previous-*")):
        if not out.exists():
            previous.rename(out)
        else:
            shutil.rmtree(previous, ignore_errors=True)
    for stale in out.parent.glob(f"{prefix}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM for the block (main thread on POSIX; elsewhere a no-op)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
