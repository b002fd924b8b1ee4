"""Loads the compiled extension ``retailsim._native`` when it exists and is allowed.

``RETAILSIM_NATIVE=0`` forces the NumPy/PyTorch paths. A missing build gives one warning, once, and the
package carries on without it. Every caller goes through :func:`load` so the choice is made in one place.
Shared by the torch-facing wrappers of the C++ kernels: the dtype they compute in (:func:`work_dtype`), the
NumPy view they receive (:func:`as_numpy`) and their thread count (:func:`set_num_threads`).
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


def work_dtype(tensor) -> "torch.dtype":
    """The dtype the C++ kernels compute in for ``tensor``: float64 for float64 (the gradcheck builds), else
    float32 (bf16/fp16 upcast)."""
    import torch

    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def as_numpy(tensor, dtype, strided: bool):
    """A NumPy view of ``tensor`` (detached) in ``dtype`` for a C++ kernel: at its own strides when the kernel
    reads the argument strided, else C-contiguous; copied only where the dtype or the layout asks for it."""
    if tensor is None:
        return None
    tensor = tensor.detach().to(dtype)
    return tensor.numpy() if strided else tensor.contiguous().numpy()


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
