"""The autograd Function of the C++ causal conv and its ``torch.library`` custom ops.

Eager calls run the launchers directly (outputs keep x's layout); under ``torch.compile`` the Function calls
``retailsim::causal_conv1d_fwd`` / ``_bwd``, opaque to the compiler, with contiguous outputs as their fake
implementations say, so a model with the conv traces without a graph break.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops.causal_conv import launchers


@torch.library.custom_op("retailsim::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], silu: bool) -> torch.Tensor:
    return launchers.forward(x=x, weight=weight, bias=bias, silu=silu).contiguous()


@causal_conv1d_fwd.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("retailsim::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) contiguous; dbias is empty without a bias."""
    dx, dweight, dbias = launchers.backward(dout=dout, x=x, weight=weight, bias=bias, silu=silu)
    return dx.contiguous(), dweight.contiguous(), x.new_empty(0) if dbias is None else dbias.contiguous()


@causal_conv1d_bwd.register_fake
def _(dout, x, weight, bias, silu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(0) if bias is None else \
        bias.new_empty(bias.shape)


class NativeCausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        if torch.compiler.is_compiling():
            out = causal_conv1d_fwd(x, weight, bias, silu)
        else:
            out = launchers.forward(x=x, weight=weight, bias=bias, silu=silu)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        if torch.compiler.is_compiling():
            dx, dweight, dbias = causal_conv1d_bwd(dout, x, weight, bias, ctx.silu)
        else:
            dx, dweight, dbias = launchers.backward(dout=dout, x=x, weight=weight, bias=bias, silu=ctx.silu)
        needs = ctx.needs_input_grad
        return (dx if needs[0] else None, dweight if needs[1] else None,
                dbias if bias is not None and needs[2] else None, None)
