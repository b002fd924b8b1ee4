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
