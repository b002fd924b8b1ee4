"""The ``retailsim`` command. Each verb lives in its own module, runnable as ``python -m retailsim.<module>``.

A verb module defines ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``. Errors the user can
cause (:class:`retailsim.errors.RetailSimInputError`) print one line and exit with status 2, no traceback; so
does a file the system refuses to read or write (``OSError``: permissions, a full disk, a folder where a file
was expected), with the file and the system's reason. Ctrl-C exits 130 and SIGTERM 143, both after the
verb's clean-up has run (temporary folders removed, outputs left as they were).
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from retailsim.errors import RetailSimInputError, Terminated, first_line


def prefer_passive_cpu_waits() -> None:
    """Let torch's OpenMP threads sleep, not spin, while they wait at the end of a parallel region.

    On a CPU shared with a busy process, a spinning thread burns the core its descheduled sibling (or the
    neighbour) needs, and every region waits for the slowest thread. Passive waiting costs nothing measurable
    idle (benchmarks/training_under_load.py). libgomp reads the setting once, when torch loads it, so this runs
    at import of the CLI (before any verb imports torch) and never overrides a value the user set.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


prefer_passive_cpu_waits()

# verb -> module. Verb modules keep heavy imports (torch, the model) inside run() so `--help` stays fast.
VERBS = {
    "generate": "retailsim.generate",
    "prepare-samples": "retailsim.prepare_samples",
    "prepare-tensor-cache": "retailsim.prepare_tensor_cache",
    "train": "retailsim.train.cli",
    "evaluate": "retailsim.evaluate",
    "demo": "retailsim.demo",
}


_HANDLER_PID = os.getpid()


def _terminate(signum, frame):
    if os.getpid() != _HANDLER_PID:  # a forked child (a data-loader worker) that inherited the handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def describe_os_error(error: OSError) -> str:
    """``<file>: <reason>`` in one line."""
    reason = error.strerror or first_line(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a verb; a user error becomes one line on stderr and exit status 2."""
    global _HANDLER_PID
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds like Ctrl-C, clean-up included
        _HANDLER_PID = os.getpid()
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(run(args) or 0)
    except RetailSimInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no output was left half-written.", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; no output was left half-written.", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def module_main(module_name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m retailsim.<module>``."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"python -m {module_name}",
        description=module.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.add_arguments(parser)
    return run_guarded(module.run, parser.parse_args(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retailsim", description="RetailSim: a world model of grocery shoppers.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        sub = verbs.add_parser(
            verb,
            help=module.DESCRIPTION.splitlines()[0],
            description=module.DESCRIPTION,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
