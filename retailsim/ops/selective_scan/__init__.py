"""``selective_scan``: the Mamba recurrence, forward and backward, on every backend (SPEC 6.2)."""
from __future__ import annotations

import torch

from retailsim.ops.selective_scan.function import SelectiveScanFn, resolve
from retailsim.ops.selective_scan.reference import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(name: str, tensor, shape: tuple, device: torch.device) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dtype not in _FLOATS:
        raise TypeError(f"selective_scan: {name} must be float32, float16, bfloat16 (or float64), got {tensor.dtype}.")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(tensor.shape)}.")
    if tensor.device != device:
        raise ValueError(f"selective_scan: {name} is on {tensor.device} but u is on {device}.")


def _check_bc(name: str, tensor, batch: int, dim: int, dstate: int, length: int, device) -> None:
    if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
        groups = tensor.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"selective_scan: {name} has {groups} groups, which must divide dim={dim}.")
        _check(name, tensor, (batch, groups, dstate, length), device)
    else:
        _check(name, tensor, (batch, dstate, length), device)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """The selective state-space scan of Mamba, with mamba_ssm's ``selective_scan_fn`` semantics.

    For each batch b, channel d and state n (state kept in float32)::

        Δ_t = softplus(delta_t + delta_bias)        (softplus only if delta_softplus; bias only if given)
        h_t = exp(Δ_t A[d, n]) h_{t-1} + Δ_t B[n, t] u_t,        h_{-1} = 0
        y_t = Σ_n C[n, t] h_t[n] + D[d] u_t,   out_t = y_t · silu(z_t)   (D, z optional)

    Args:
        u, delta: (batch, dim, L), float32/float16/bfloat16; any strides (u and z may be views of one
            projection).
        A: (dim, N), float32 (real; Mamba uses A = -exp(A_log)).
        B, C: (batch, N, L), or (batch, groups, N, L) where group g serves channels
            [g·dim/groups, (g+1)·dim/groups).
        D, delta_bias: (dim,) float32, optional.
        z: (batch, dim, L), optional gate.
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return h_{L-1}, (batch, dim, N) float32. No gradient flows through the last
            state (as in mamba_ssm); use it for inference caches.

    Returns:
        out (batch, dim, L) in u's dtype, or (out, last_state).

    Gradients reach every tensor argument (cast back to its dtype); the backward is deterministic.
    The backend is chosen by :mod:`retailsim.ops.backend` before autograd records the call: Triton on CUDA,
    the C++ kernel on CPU when built, else the chunked PyTorch path; ``backend_info()`` says which.

    Example::

        >>> b, d, L, N = 2, 64, 128, 16
        >>> u, delta, z = (torch.randn(b, d, L) for _ in range(3))
        >>> A = -torch.rand(d, N) - 0.5
        >>> B, C = torch.randn(b, N, L), torch.randn(b, N, L)
        >>> out, h = selective_scan(u, delta, A, B, C, D=torch.ones(d), z=z,
        ...                         delta_softplus=True, return_last_state=True)
        >>> out.shape, h.shape
        (torch.Size([2, 64, 128]), torch.Size([2, 64, 16]))
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan: u must be a (batch, dim, L) tensor, got {getattr(u, 'shape', u)}.")
    batch, dim, length = u.shape
    device = u.device
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f"selective_scan: A must be a (dim, N) tensor, got {getattr(A, 'shape', A)}.")
    dstate = A.shape[1]
    if length == 0 or batch == 0 or dim == 0 or dstate == 0:
        raise ValueError(f"selective_scan: u {tuple(u.shape)} and A {tuple(A.shape)} must have no empty dimension.")
    _check("u", u, (batch, dim, length), device)
    _check("delta", delta, (batch, dim, length), device)
    _check("A", A, (dim, dstate), device)
    _check_bc("B", B, batch, dim, dstate, length, device)
    _check_bc("C", C, batch, dim, dstate, length, device)
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B has {B.shape[1]} groups but C has {C.shape[1]}; they must match.")
    for name, tensor in (("D", D), ("delta_bias", delta_bias)):
        if tensor is not None:
            _check(name, tensor, (dim,), device)
    if z is not None:
        _check("z", z, (batch, dim, length), device)
    out, last_state = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                            resolve(device.type))
    return (out, last_state) if return_last_state else out
