"""The autograd Function of the selective scan, parameterised by the backend resolved before it is applied.

Each backend module exposes the launcher pair ``selective_scan_fwd`` / ``selective_scan_bwd`` (contract in
``torch_scan.py``): ``triton`` (this folder's ``triton.py``), ``native`` (``native.py``, the C++ kernel),
``torch`` (``torch_scan.py``). Forward and backward always run on the same one.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops import backend

_MODULES = {"triton": "triton", "native": "native", "torch": "torch_scan"}


def native_launchers() -> ModuleType | None:
    """This op's wrapper of the C++ kernel, or None while it is absent or the extension lacks the kernel."""
    try:
        module = importlib.import_module("retailsim.ops.selective_scan.native")
    except ImportError:
        return None
    available = getattr(module, "available", None)
    return module if available is None or available() else None


def launchers(device: torch.device) -> tuple[str, ModuleType]:
    """(backend name, launcher module) for tensors on ``device``."""
    name = backend.resolve("selective_scan", device, has_native=native_launchers() is not None)
    return name, importlib.import_module(f"retailsim.ops.selective_scan.{_MODULES[name]}")


def _cast(grad: torch.Tensor | None, like: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
    if grad is None or like is None or not needed:
        return None
    return grad.to(like.dtype)


class SelectiveScanFn(torch.autograd.Function):
    """out, last_state = scan(u, delta, A, B, C, D, z, delta_bias); no gradient flows through last_state."""

    @staticmethod
    def forward(ctx, launcher, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last_state, saved = launcher.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.launcher = launcher
        ctx.delta_softplus = delta_softplus
        ctx.n_saved = len(saved)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *saved)
        ctx.mark_non_differentiable(last_state)
        return out.to(u.dtype), last_state

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dlast_state):
        u, delta, A, B, C, D, z, delta_bias, *saved = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = ctx.launcher.selective_scan_bwd(
            dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, tuple(saved)
        )
        grads = (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        needed = ctx.needs_input_grad[1:9]
        return (None, *(_cast(g, x, n) for g, x, n in zip(grads, inputs, needed)), None)
