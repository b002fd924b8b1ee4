"""The causal depthwise 1-D convolution beside the scan in a Mamba block.

One function, two implementations with the same semantics: ``causal_conv1d_fn`` from the causal-conv1d
package for CUDA tensors when it is installed (and the backend request is not ``torch``), else
``F.conv1d`` on the input left-padded by width - 1 (what Mamba's ``nn.Conv1d(padding=width-1)[..., :L]`` does).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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
        (batch, dim, L) in x's dtype. Differentiable on both implementations.

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
    if x.is_cuda and backend.get_backend() != "torch" and package_available():
        # The package's kernel wants x contiguous along L or along dim; weight and bias in x's dtype.
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        return _package_fn()(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                             activation=activation)
    return causal_conv1d_torch(x, weight, bias, activation)
