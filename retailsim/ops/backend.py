"""Which implementation of an op runs for a given tensor (SPEC 6.1).

Backends: ``triton`` (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``), ``native`` (the C++
kernels of ``retailsim._native``, CPU tensors), ``torch`` (pure PyTorch: MPS, and CPU without the extension).
The request comes from ``set_backend`` or the ``RETAILSIM_BACKEND`` environment variable (default ``auto``).

``auto``: CUDA -> triton; CPU -> native where the op has a C++ kernel and the extension is built, else torch;
anything else (MPS) -> torch. An explicit request that cannot run raises; an explicit ``native`` for an op
that has no C++ kernel runs the torch path (so a global ``RETAILSIM_BACKEND=native`` stays usable).
Ops resolve before calling their ``autograd.Function``, so forward and backward run on the same backend.

The registry: each op registers, when its package is imported, the function that says what serves a device
(``register``); ``implementation(op, device)`` asks it and ``backend_info`` lists every registered op. The
causal conv has its own rule (the causal-conv1d package on CUDA) behind the same call. Under
``torch.compile`` the choice is read once, when the model is traced.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable

import torch

from retailsim import native

BACKENDS = ("auto", "triton", "native", "torch")
_requested: str | None = None  # set_backend overrides the environment variable
_REGISTRY: dict[str, Callable[[torch.device], str]] = {}  # op -> what serves a device


def register(op: str, implementation: Callable[[torch.device], str]) -> None:
    """Enter ``op`` with the function that names the implementation serving tensors of a device."""
    _REGISTRY[op] = implementation


def implementation(op: str, device: torch.device | str) -> str:
    """The implementation of a registered ``op`` for tensors on ``device`` (raises as ``resolve`` does)."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; registered: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[op](torch.device(device))


def _validate(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}.")
    return name


def set_backend(name: str | None) -> None:
    """Choose the backend for every op (``None`` returns to ``RETAILSIM_BACKEND`` / auto)."""
    global _requested
    _requested = None if name is None else _validate(name, "set_backend(name)")


def get_backend() -> str:
    """The requested backend name (``auto`` unless set)."""
    if _requested is not None:
        return _requested
    return _validate(os.environ.get("RETAILSIM_BACKEND", "auto"), "RETAILSIM_BACKEND")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    if not triton_importable():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


def resolve(op: str, device: torch.device, has_native: bool) -> str:
    """The backend that runs ``op`` on tensors of ``device``: one of ``triton``, ``native``, ``torch``.

    ``has_native`` says whether the op has a C++ kernel in ``retailsim._native``.
    """
    requested = get_backend()
    if requested == "auto":
        if device.type == "cuda" and triton_importable():
            return "triton"
        if device.type == "cpu" and has_native and native.available():
            return "native"
        return "torch"
    if requested == "triton":
        if not triton_runs_on(device):
            why = "Triton is not installed" if not triton_importable() else (
                "Triton runs on CUDA tensors, or on CPU tensors only with TRITON_INTERPRET=1 set before import"
            )
            raise RuntimeError(f"{op}: backend 'triton' was requested for {device.type} tensors but {why}.")
        return "triton"
    if requested == "native":
        if device.type != "cpu":
            raise RuntimeError(f"{op}: backend 'native' runs on CPU tensors, got {device.type} tensors.")
        if not has_native:
            return "torch"
        if not native.available():
            raise RuntimeError(
                f"{op}: backend 'native' was requested but retailsim._native is not available "
                "(not built, or RETAILSIM_NATIVE=0)."
            )
        return "native"
    return "torch"


def backend_info() -> dict:
    """What runs where: the request, what each device kind resolves to, and what is installed."""
    info = {
        "requested": get_backend(),
        "triton_installed": triton_importable(),
        "triton_interpret": interpreter_enabled(),
        "native_built": native.available(),
        "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "ops": {},
    }
    for op in sorted(_REGISTRY):
        per_device = {}
        for kind in ("cpu", "cuda", "mps"):
            try:
                per_device[kind] = implementation(op, kind)
            except RuntimeError as error:
                per_device[kind] = f"error: {error}"
        info["ops"][op] = per_device
    return info
