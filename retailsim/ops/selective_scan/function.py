"""The autograd Function of the selective scan and its ``torch.library`` custom ops.

The backend (``triton``, ``native``, ``torch``: the launcher modules of ``contract.py``) is resolved by name
before the Function is applied, so forward and backward run on the same one. Eager calls run the launchers
directly (no dispatcher round trip, and outputs keep the layout the C++ kernel gives them); under
``torch.compile`` the Function calls the custom ops ``retailsim::selective_scan_fwd`` / ``_bwd`` instead,
which the compiler treats as opaque calls with the shapes their fake implementations give (their outputs are
contiguous, in the inputs' dtypes), so a model with a scan traces without a graph break.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops import backend
from retailsim.ops.selective_scan.contract import ScanForward, ScanGrads, groups_of

_MODULES = {"triton": "triton", "native": "native", "torch": "torch_scan"}


def launcher_module(name: str) -> ModuleType:
    """The launcher module of backend ``name`` (imported on first use: Triton only when it runs)."""
    return importlib.import_module(f"retailsim.ops.selective_scan.{_MODULES[name]}")


def native_launchers() -> ModuleType | None:
    """This op's wrapper of the C++ kernel, or None while the extension lacks the kernel."""
    module = launcher_module("native")
    return module if module.available() else None


@torch.compiler.assume_constant_result  # torch.compile reads the choice once, when it traces
def resolve(device_type: str) -> str:
    """The backend that runs the scan for tensors on a device of type ``device_type``."""
    return backend.resolve("selective_scan", torch.device(device_type), has_native=native_launchers() is not None)


backend.register("selective_scan", lambda device: resolve(device.type))


def launchers(device: torch.device) -> tuple[str, ModuleType]:
    """(backend name, launcher module) for tensors on ``device``."""
    name = resolve(device.type)
    return name, launcher_module(name)


def _work_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


# ----------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("retailsim::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
    delta_softplus: bool, save_states: bool, backend_name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (batch, dim, L) contiguous in u's dtype, last_state, checkpoints)."""
    result = launcher_module(backend_name).forward(
        u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        save_states=save_states)
    return result.out.to(u.dtype).contiguous(), result.last_state, result.checkpoints


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states, backend_name):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    shape = launcher_module(backend_name).checkpoint_shape(batch, dim, length, dstate, groups_of(B, C),
                                                           save_states)
    work = _work_dtype(u)
    return (u.new_empty((batch, dim, length)), u.new_empty((batch, dim, dstate), dtype=work),
            u.new_empty(shape, dtype=work))


_GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # ScanGrads' order


@torch.library.custom_op("retailsim::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
    checkpoints: torch.Tensor, delta_softplus: bool, backend_name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """ScanGrads' eight gradients, each contiguous in its input's dtype (empty where the input is None)."""
    grads = launcher_module(backend_name).backward(
        dout=dout, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
        delta_softplus=delta_softplus, checkpoints=checkpoints)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(_empty(u) if g is None else g.to(x.dtype).contiguous() for g, x in zip(grads, inputs))


@selective_scan_bwd.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, checkpoints, delta_softplus, backend_name):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(_empty(u) if x is None else torch.empty_like(x, memory_format=torch.contiguous_format)
                 for x in inputs)


# ---------------------------------------------------------------------------------------- autograd Function
def _cast(grad: torch.Tensor | None, like: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
    if grad is None or like is None or not needed:
        return None
    return grad.to(like.dtype)


class SelectiveScanFn(torch.autograd.Function):
    """out, last_state = scan(u, delta, A, B, C, D, z, delta_bias); no gradient flows through last_state."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend_name):
        save = any(ctx.needs_input_grad[:8])
        if torch.compiler.is_compiling():
            out, last_state, checkpoints = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                              save, backend_name)
        else:
            out, last_state, checkpoints = launcher_module(backend_name).forward(
                u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                save_states=save)
            out = out.to(u.dtype)
        ctx.backend_name, ctx.delta_softplus = backend_name, delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        ctx.mark_non_differentiable(last_state)
        return out, last_state

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dlast_state):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        if torch.compiler.is_compiling():
            grads = ScanGrads(*(None if x is None else g for g, x in zip(selective_scan_bwd(
                dout, u, delta, A, B, C, D, z, delta_bias, checkpoints, ctx.delta_softplus, ctx.backend_name),
                inputs)))
        else:
            grads = launcher_module(ctx.backend_name).backward(
                dout=dout, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                delta_softplus=ctx.delta_softplus, checkpoints=checkpoints)
        needed = ctx.needs_input_grad[:8]
        return (*(_cast(g, x, n) for g, x, n in zip(grads, inputs, needed)), None, None)


__all__ = ["ScanForward", "ScanGrads", "SelectiveScanFn", "launcher_module", "launchers", "native_launchers",
           "resolve", "selective_scan_bwd", "selective_scan_fwd"]
