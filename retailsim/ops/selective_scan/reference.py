"""The step-by-step selective scan: the definition every other path is tested against.

Semantics of mamba_ssm's ``selective_scan_ref``: Δ gets ``delta_bias`` added, then softplus if asked;
h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t, out_t = y_t silu(z_t). Grouped B/C
(batch, groups, N, L) serve dim/groups consecutive channels each. Pure torch: imports neither Triton nor the
extension. Computes in float32 (float64 when given float64, which is how the tests build their float64
truth) and returns u's dtype; autograd runs through the loop, so it is slow and memory-hungry by design.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other float dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, groups, N, L) -> (batch, dim, N, L), channel d reading group d // (dim/groups)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(BC.shape[0], dim, *BC.shape[1:])
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def discretize_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ + bias, then softplus (linear above 20, as torch and mamba_ssm's kernel do)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def selective_scan_ref(
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
    """Same arguments and result as :func:`retailsim.ops.selective_scan`, computed one step at a time."""
    dtype_in = u.dtype
    work = compute_dtype(dtype_in)
    batch, dim, length = u.shape
    u = u.to(work)                                                          # (batch, dim, L)
    delta = discretize_delta(delta.to(work), delta_bias, delta_softplus)   # (batch, dim, L)
    A = A.to(work)                                                          # (dim, N)
    B = expand_groups(B.to(work), dim)                                      # (batch, dim, N, L)
    C = expand_groups(C.to(work), dim)                                      # (batch, dim, N, L)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))               # (batch, dim, L, N)
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)                 # (batch, dim, L, N)
    state = u.new_zeros(batch, dim, A.shape[1])                             # (batch, dim, N)
    ys = []
    # unbind, not indexing: indexing's backward would materialise a full-size gradient at every step.
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(3)):
        state = decay_t * state + drive_t                                   # (batch, dim, N)
        ys.append(torch.einsum("bdn,bdn->bd", state, C_t))
    y = torch.stack(ys, dim=2)                                              # (batch, dim, L)
    if D is not None:
        y = y + u * D[:, None].to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    out = y.to(dtype_in)
    return (out, state) if return_last_state else out
