"""The causal conv's implementations behind one contract, as the other ops' launchers:

    forward(*, x, weight, bias, silu) -> out (batch, dim, L)
    backward(*, dout, x, weight, bias, silu) -> ConvGrads(dx, dweight, dbias)
    config_for(shape, dtype, arch) -> dict

``native``: the C++ kernel of ``retailsim._native`` (``kernels/causal_conv.cpp``): float32 math (float64 for
float64 x, used by the gradcheck), x read at its strides, out and dx in x's dtype and layout (a time-major x,
(batch, L, dim) in memory as a matmul produces it, gives time-major results). Threads: ``retailsim.native``'s
shared setting. The ``torch`` path (``F.conv1d`` on x left-padded by width - 1, what Mamba's
``nn.Conv1d(padding=width-1)[..., :L]`` does) and the causal-conv1d package differentiate themselves.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from retailsim import native


class ConvGrads(NamedTuple):
    dx: torch.Tensor
    dweight: torch.Tensor
    dbias: torch.Tensor | None


@functools.lru_cache(maxsize=None)
def package_fn():
    """causal-conv1d's ``causal_conv1d_fn`` (CUDA), or None when the package is not installed."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def native_kernel():
    """The extension module when it is loaded and carries the causal conv kernel, else None."""
    module = native.load()
    return module if module is not None and hasattr(module, "causal_conv1d_fwd") else None


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """(batch, dim, L, width) -> what the CPU kernel runs with; no tiles anywhere (no Triton kernel)."""
    return {"threads": native.get_num_threads()}


def forward(*, x, weight, bias, silu) -> torch.Tensor:
    """The C++ forward; out in x's dtype and layout."""
    work = native.work_dtype(x)
    out = native_kernel().causal_conv1d_fwd(
        native.as_numpy(x, work, True), native.as_numpy(weight, work, False), native.as_numpy(bias, work, False),
        silu=silu, num_threads=native.get_num_threads())
    return torch.from_numpy(out).to(x.dtype)


def backward(*, dout, x, weight, bias, silu) -> ConvGrads:
    """The C++ backward: every gradient in its input's dtype (dbias None without a bias)."""
    work = native.work_dtype(x)
    dx, dweight, dbias = native_kernel().causal_conv1d_bwd(
        native.as_numpy(dout, work, True), native.as_numpy(x, work, True), native.as_numpy(weight, work, False),
        native.as_numpy(bias, work, False), silu=silu, num_threads=native.get_num_threads())
    return ConvGrads(torch.from_numpy(dx).to(x.dtype), torch.from_numpy(dweight).to(weight.dtype),
                     None if bias is None else torch.from_numpy(dbias).to(bias.dtype))


def causal_conv1d_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | None = None) -> torch.Tensor:
    """The PyTorch implementation: F.conv1d with groups=dim on x padded on the left only."""
    dim, width = weight.shape
    padded = F.pad(x, (width - 1, 0))                                     # (batch, dim, width - 1 + L)
    out = F.conv1d(padded, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype),
                   groups=dim)                                            # (batch, dim, L)
    return F.silu(out) if activation in ("silu", "swish") else out
