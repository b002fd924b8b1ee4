"""The PyTorch path of the selective scan (MPS, and CPU without the C++ extension), with its own backward.

The sequence is cut into chunks of ``chunk`` steps. Per chunk the decays exp(Δ A) and drives Δ B u are built
in bulk (chunk, batch, groups, dim/groups, N), the recurrence runs one fused multiply-add per step on a
contiguous (batch, dim, N) slice, and C·h is reduced in bulk. Forward keeps only the state at each chunk
start; backward walks the chunks in reverse, recomputes that chunk's states from its checkpoint and runs the
adjoint recurrence g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1} the same way. Memory is
O(batch·dim·N·chunk) plus the checkpoints; everything is float32 (no float64: MPS has none), except for
float64 inputs, which compute in float64 so that the backward can be gradchecked.

Launcher contract: ``contract.py`` (keyword-only ``forward`` / ``backward``, ``checkpoint_shape``,
``config_for``); out, last_state and the gradients in float32 (float64 for float64 inputs). ``checkpoints``
is the state entering each chunk, (n_chunks, batch, groups, dim/groups, N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from retailsim.ops.selective_scan.contract import ScanForward, ScanGrads, groups_of
from retailsim.ops.selective_scan.reference import compute_dtype

# Elements of one chunk's (chunk, batch, dim, N) work tensors: 4 MiB each in float32, so that a chunk's
# decays, drives and states stay in the last-level cache while its step loop streams through them (at
# (8, 256, 256, 16) fp32 fwd+bwd, 2-core VM: 16 MiB chunks ran at 0.95-1.0x the step-by-step reference,
# 4 MiB chunks at 1.2x; benchmarks/bench_selective_scan.py, rows torch-path and reference).
CHUNK_ELEMENTS = 1 << 20
SOFTPLUS_THRESHOLD = 20.0


def chunk_length(batch: int, dim: int, dstate: int, length: int) -> int:
    return max(1, min(length, CHUNK_ELEMENTS // max(1, batch * dim * dstate)))


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """{"chunk": steps per bulk chunk} for (batch, dim, L, N); the same on every device."""
    batch, dim, length, dstate = shape
    return {"chunk": chunk_length(batch, dim, dstate, length)}


def checkpoint_shape(batch: int, dim: int, length: int, dstate: int, groups: int, save_states: bool = True) -> tuple:
    """The state entering each chunk: (n_chunks, batch, groups, dim/groups, N)."""
    n_chunks = -(-length // chunk_length(batch, dim, dstate, length))
    return (n_chunks, batch, groups, dim // groups, dstate)


def _grouped(BC: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """(batch, N, L) or (batch, groups, N, L) -> (L, batch, groups, 1, N) in the work dtype."""
    if BC.dim() == 3:
        BC = BC.unsqueeze(1)
    return BC.to(work).permute(3, 0, 1, 2).unsqueeze(3)


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    batch, dim, length = u.shape
    work = compute_dtype(u.dtype)
    groups = groups_of(B, C)
    per_group = dim // groups
    shape = (length, batch, groups, per_group)
    # Step-major layouts: a step's slice is contiguous (batch, groups, dim/groups).
    u_t = u.to(work).permute(2, 0, 1).reshape(shape)                         # (L, batch, G, dim/G)
    pre = delta.to(work)
    if delta_bias is not None:
        pre = pre + delta_bias.to(work)[:, None]
    delta_t = (F.softplus(pre) if delta_softplus else pre).permute(2, 0, 1).reshape(shape)
    A_g = A.to(work).reshape(groups, per_group, -1)                          # (G, dim/G, N)
    return dict(
        work=work, batch=batch, dim=dim, length=length, groups=groups, per_group=per_group, shape=shape,
        u=u_t, delta=delta_t, pre=pre, A=A_g, B=_grouped(B, work), C=_grouped(C, work),
        D=None if D is None else D.to(work).reshape(groups, per_group),
        z=None if z is None else z.to(work).permute(2, 0, 1).reshape(shape),
    )


def _chunk_states(p, start, stop, state):
    """States h_t for t in [start, stop) from the state before ``start``; returns (decay, drive, states)."""
    delta = p["delta"][start:stop, ..., None]                               # (T, batch, G, dim/G, 1)
    decay = torch.exp(delta * p["A"])                                       # (T, batch, G, dim/G, N)
    drive = (delta * p["u"][start:stop, ..., None]) * p["B"][start:stop]    # (T, batch, G, dim/G, N)
    states = torch.empty_like(decay)
    for t in range(stop - start):
        state = torch.addcmul(drive[t], decay[t], state, out=states[t])
    return decay, drive, states


def _gate(p, y, start, stop):
    """out = (y + D u) silu(z) on a chunk, and the pieces backward needs."""
    u = p["u"][start:stop]
    if p["D"] is not None:
        y = y + u * p["D"]
    if p["z"] is None:
        return y
    return y * F.silu(p["z"][start:stop])


def _to_bdl(x_t: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """(L, batch, G, dim/G) -> (batch, dim, L)."""
    return x_t.reshape(x_t.shape[0], batch, dim).permute(1, 2, 0)


def forward(*, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
            save_states=True) -> ScanForward:
    """The chunked forward; it always keeps the chunk-start states (they are small)."""
    p = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length, dstate = p["batch"], p["dim"], p["length"], A.shape[1]
    chunk = chunk_length(batch, dim, dstate, length)
    out_t = torch.empty(p["shape"], dtype=p["work"], device=u.device)  # (L, batch, G, dim/G)
    state = torch.zeros(batch, p["groups"], p["per_group"], dstate, dtype=p["work"], device=u.device)
    checkpoints = []
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        checkpoints.append(state)
        _, _, states = _chunk_states(p, start, stop, state)
        y = (states @ p["C"][start:stop].transpose(-1, -2)).squeeze(-1)       # (T, batch, G, dim/G)
        out_t[start:stop] = _gate(p, y, start, stop)
        state = states[-1].clone()
    out = _to_bdl(out_t, batch, dim).contiguous()
    return ScanForward(out, state.reshape(batch, dim, dstate), torch.stack(checkpoints))


def backward(*, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             checkpoints) -> ScanGrads:
    p = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length, dstate = p["batch"], p["dim"], p["length"], A.shape[1]
    groups, shape = p["groups"], p["shape"]
    chunk = chunk_length(batch, dim, dstate, length)
    dout_t = dout.to(p["work"]).permute(2, 0, 1).reshape(shape)
    du_t = torch.empty(shape, dtype=p["work"], device=u.device)
    ddelta_t = torch.empty(shape, dtype=p["work"], device=u.device)
    dz_t = None if z is None else torch.empty(shape, dtype=p["work"], device=u.device)
    dB_t = torch.empty(length, batch, groups, dstate, dtype=p["work"], device=u.device)
    dC_t = torch.empty_like(dB_t)
    dA = torch.zeros_like(p["A"])
    dD = None if D is None else torch.zeros_like(p["D"])
    carry = torch.zeros_like(checkpoints[0])                                # exp(Δ_{t+1}A) g_{t+1}
    starts = list(range(0, length, chunk))
    for index in reversed(range(len(starts))):
        start = starts[index]
        stop = min(length, start + chunk)
        decay, drive, states = _chunk_states(p, start, stop, checkpoints[index])
        u_c, delta_c, C_c, B_c = p["u"][start:stop], p["delta"][start:stop], p["C"][start:stop], p["B"][start:stop]
        dy = dout_t[start:stop]
        # Contractions as batched matmuls over (T, batch, G): einsum would copy the big operands first.
        C_col, B_col = C_c.transpose(-1, -2), B_c.transpose(-1, -2)          # (T, batch, G, N, 1)
        if z is not None:
            y = (states @ C_col).squeeze(-1)
            if D is not None:
                y = y + u_c * p["D"]
            gate_sig = torch.sigmoid(p["z"][start:stop])
            dz_t[start:stop] = dy * y * gate_sig * (1 + p["z"][start:stop] * (1 - gate_sig))
            dy = dy * p["z"][start:stop] * gate_sig
        # Adjoint recurrence, one fused multiply-add per step, in reverse.
        adjoint = dy[..., None] * C_c                                       # (T, batch, G, dim/G, N)
        # g_t = e_t + a_{t+1} g_{t+1}: one fused multiply-add per step, in place, the carry from the chunk
        # after this one entering at its last step.
        adjoint[-1].add_(carry)
        for t in range(stop - start - 2, -1, -1):
            adjoint[t].addcmul_(decay[t + 1], adjoint[t + 1])
        carry = decay[0] * adjoint[0]
        weighted = torch.empty_like(decay)                                  # g_t exp(Δ_t A) h_{t-1}
        torch.mul(decay[0], checkpoints[index], out=weighted[0])
        torch.mul(decay[1:], states[:-1], out=weighted[1:])
        weighted.mul_(adjoint)
        gB = (adjoint @ B_col).squeeze(-1)                                  # Σ_n g_t B_t
        ddelta_t[start:stop] = (weighted * p["A"]).sum(-1) + gB * u_c
        dA += weighted.mul_(delta_c[..., None]).sum((0, 1))
        dB_t[start:stop] = (adjoint.transpose(-1, -2) @ (delta_c * u_c)[..., None]).squeeze(-1)
        dC_t[start:stop] = (states.transpose(-1, -2) @ dy[..., None]).squeeze(-1)
        du_c = gB * delta_c
        if D is not None:
            du_c = du_c + dy * p["D"]
            dD += (dy * u_c).sum((0, 1))
        du_t[start:stop] = du_c
    ddelta = _to_bdl(ddelta_t, batch, dim)
    ddelta_bias = None
    if delta_softplus:
        # softplus'(x) = sigmoid(x), and 1 where softplus is the identity (x > threshold).
        ddelta = ddelta * torch.where(p["pre"] > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(p["pre"]))
    if delta_bias is not None:
        ddelta_bias = ddelta.sum((0, 2))
    # (L, batch, G, N) -> (batch, G, N, L), summing the groups away where B or C had none.
    dB = dB_t.sum(2).permute(1, 2, 0) if B.dim() == 3 else dB_t.permute(1, 2, 3, 0)
    dC = dC_t.sum(2).permute(1, 2, 0) if C.dim() == 3 else dC_t.permute(1, 2, 3, 0)
    return ScanGrads(
        du=_to_bdl(du_t, batch, dim).contiguous(),
        ddelta=ddelta.contiguous(),
        dA=dA.reshape(dim, dstate),
        dB=dB.contiguous(),
        dC=dC.contiguous(),
        dD=None if dD is None else dD.reshape(dim),
        dz=None if dz_t is None else _to_bdl(dz_t, batch, dim).contiguous(),
        ddelta_bias=ddelta_bias,
    )
