"""Loads the compiled extension ``retailsim._native`` when it exists and is allowed.

``RETAILSIM_NATIVE=0`` forces the NumPy/PyTorch paths. A missing build gives one warning, once, and the
package carries on without it. Every caller goes through :func:`load` so the choice is made in one place.
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType

_UNSET = object()
_module: object = _UNSET


def disabled_by_env() -> bool:
    return os.environ.get("RETAILSIM_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def load() -> ModuleType | None:
    """The extension module, or None when it is disabled or was not built (warns once in that case)."""
    global _module
    if disabled_by_env():
        return None
    if _module is _UNSET:
        try:
            from retailsim import _native  # type: ignore[attr-defined]
        except ImportError as error:
            warnings.warn(
                f"retailsim._native is not built ({error}); using the NumPy/PyTorch paths. "
                "Reinstall with a C++17 compiler and CMake to get the native kernels.",
                RuntimeWarning,
                stacklevel=2,
            )
            _native = None
        _module = _native
    return _module  # type: ignore[return-value]


def available() -> bool:
    return load() is not None


_num_threads: int | None = None


def set_num_threads(n: int | None) -> None:
    """Threads the C++ kernels (selective scan, causal conv) use; None: follow ``torch.get_num_threads()``.
    Their results do not depend on it."""
    global _num_threads
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"set_num_threads(n): n must be a positive int or None, got {n!r}.")
    _num_threads = n


def get_num_threads() -> int:
    """The thread count the next C++ kernel call will use."""
    if _num_threads is not None:
        return _num_threads
    import torch

    return max(1, torch.get_num_threads())
