"""The causal depthwise 1-D convolution beside the scan in a Mamba block.

One function, three implementations with the same semantics: ``causal_conv1d_fn`` from the causal-conv1d
package for CUDA tensors when it is installed (and the backend request is not ``torch``); the C++ kernel of
``retailsim._native`` (``kernels/causal_conv.cpp``) for CPU tensors when the extension is built (and the
request is ``auto`` or ``native``); else ``F.conv1d`` on the input left-padded by width - 1 (what Mamba's
``nn.Conv1d(padding=width-1)[..., :L]`` does). The C++ kernel reads x at its strides and returns the output
in x's layout: a time-major x ((batch, L, dim) in memory, as a matmul produces it) gives a time-major output.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from retailsim import native
from retailsim.ops import backend

ACTIVATIONS = (None, "silu", "swish")


@functools.lru_cache(maxsize=None)
def _package_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def package_available() -> bool:
    """Whether the causal-conv1d package (CUDA kernels) can be imported."""
    return _package_fn() is not None


def _native_kernel():
    module = native.load()
    return module if module is not None and hasattr(module, "causal_conv1d_fwd") else None


def implementation(device: torch.device | str) -> str:
    """Which implementation serves tensors on ``device``: ``causal-conv1d``, ``native`` or ``torch``."""
    device = torch.device(device)
    requested = backend.get_backend()
    if device.type == "cuda" and requested != "torch" and package_available():
        return "causal-conv1d"
    if device.type == "cpu" and requested in ("auto", "native") and _native_kernel() is not None:
        return "native"
    return "torch"


class _NativeCausalConv(torch.autograd.Function):
    """The C++ kernel: float32 math (float64 for float64 x, used by the gradcheck), x's dtype out."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        work = native.work_dtype(x)
        threads = native.get_num_threads()
        out = _native_kernel().causal_conv1d_fwd(native.as_numpy(x, work, True), native.as_numpy(weight, work, False),
                                                 native.as_numpy(bias, work, False), silu=silu, num_threads=threads)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu, ctx.work = silu, work
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        work = ctx.work
        dx, dweight, dbias = _native_kernel().causal_conv1d_bwd(
            native.as_numpy(dout, work, True), native.as_numpy(x, work, True), native.as_numpy(weight, work, False),
            native.as_numpy(bias, work, False), silu=ctx.silu, num_threads=native.get_num_threads())
        dx = torch.from_numpy(dx).to(x.dtype) if ctx.needs_input_grad[0] else None
        dweight = torch.from_numpy(dweight).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = torch.from_numpy(dbias).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None


def causal_conv1d_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        activation: str | None = None) -> torch.Tensor:
    """The PyTorch implementation: F.conv1d with groups=dim on x padded on the left only."""
    dim, width = weight.shape
    padded = F.pad(x, (width - 1, 0))                                     # (batch, dim, width - 1 + L)
    out = F.conv1d(padded, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype),
                   groups=dim)                                            # (batch, dim, L)
    return F.silu(out) if activation in ("silu", "swish") else out


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """out[b, d, t] = act(bias[d] + Σ_k weight[d, k] · x[b, d, t - (width - 1) + k]), x before 0 being 0.

    Args:
        x: (batch, dim, L), float32/float16/bfloat16.
        weight: (dim, width), the depthwise kernel (Mamba's ``conv1d.weight`` without its middle axis).
        bias: (dim,), optional.
        activation: None, or "silu" / "swish" (the same thing).

    Returns:
        (batch, dim, L) in x's dtype (on the C++ kernel, in x's layout). Differentiable on every implementation.

    Example::

        >>> out = causal_conv1d(torch.randn(2, 8, 32), torch.randn(8, 4), torch.zeros(8), activation="silu")
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be a (batch, dim, L) tensor, got {getattr(x, 'shape', x)}.")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d: weight must have shape (dim={x.shape[1]}, width), got {getattr(weight, 'shape', weight)}."
        )
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"causal_conv1d: bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}.")
    chosen = implementation(x.device)
    if chosen == "causal-conv1d":
        # The package's kernel wants x contiguous along L or along dim; weight and bias in x's dtype.
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        return _package_fn()(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                             activation=activation)
    if chosen == "native":
        return _NativeCausalConv.apply(x, weight, bias, activation in ("silu", "swish"))
    return causal_conv1d_torch(x, weight, bias, activation)
