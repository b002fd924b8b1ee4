"""The causal depthwise 1-D convolution beside the scan in a Mamba block.

One function, three implementations with the same semantics (``launchers.py``): ``causal_conv1d_fn`` from
the causal-conv1d package for CUDA tensors when it is installed (and the backend request is not ``torch``);
the C++ kernel of ``retailsim._native`` (``kernels/causal_conv.cpp``) for CPU tensors when the extension is
built (and the request is ``auto`` or ``native``); else ``F.conv1d`` on the input left-padded by width - 1.
The choice is registered with :mod:`retailsim.ops.backend` like every op's. The C++ kernel reads x at its
strides and returns the output in x's layout: a time-major x gives a time-major output.
"""
from __future__ import annotations

import torch

from retailsim.ops import backend
from retailsim.ops.causal_conv.function import NativeCausalConv
from retailsim.ops.causal_conv.launchers import causal_conv1d_torch, native_kernel, package_fn

ACTIVATIONS = (None, "silu", "swish")

__all__ = ["causal_conv1d", "causal_conv1d_torch", "implementation", "package_available"]


def package_available() -> bool:
    """Whether the causal-conv1d package (CUDA kernels) can be imported."""
    return package_fn() is not None


@torch.compiler.assume_constant_result  # torch.compile reads the choice once, when it traces
def _implementation(device_type: str) -> str:
    requested = backend.get_backend()
    if device_type == "cuda" and requested != "torch" and package_available():
        return "causal-conv1d"
    if device_type == "cpu" and requested in ("auto", "native") and native_kernel() is not None:
        return "native"
    return "torch"


def implementation(device: torch.device | str) -> str:
    """Which implementation serves tensors on ``device``: ``causal-conv1d``, ``native`` or ``torch``."""
    return _implementation(torch.device(device).type)


backend.register("causal_conv1d", implementation)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None) -> torch.Tensor:
    """out[b, d, t] = act(bias[d] + Σ_k weight[d, k] · x[b, d, t - (width - 1) + k]), x before 0 being 0.

    Args:
        x: (batch, dim, L), float32/float16/bfloat16.
        weight: (dim, width), the depthwise kernel (Mamba's ``conv1d.weight`` without its middle axis).
        bias: (dim,), optional.
        activation: None, or "silu" / "swish" (the same thing).

    Returns:
        (batch, dim, L) in x's dtype (on the C++ kernel, in x's layout; contiguous under ``torch.compile``).
        Differentiable on every implementation.

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
        return package_fn()(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                            activation=activation)
    if chosen == "native":
        return NativeCausalConv.apply(x, weight, bias, activation in ("silu", "swish"))
    return causal_conv1d_torch(x, weight, bias, activation)
