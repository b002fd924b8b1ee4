"""Triton kernels of the selective scan and their launchers (contract in ``contract.py``).

Forward: one program per (block of BLOCK_D = 32 * num_warps channels, batch element), one channel per
thread, the channel's N states in registers; the recurrence runs serially over time, so nothing crosses
threads inside the loop (no shuffle, no barrier: the kernel report checks the SASS). It saves the state
entering every CHUNK-step chunk. Backward: one program per (block of BLOCK_D channels, batch element) walking
the chunks last to first with [BLOCK_D, N_PAD, CHUNK] register tiles and associative scans along CHUNK,
recomputing each chunk's states from the forward's checkpoint. State in ``ACC`` (float32; float64 only for
float64 inputs, which the gradcheck uses). L is a runtime argument that Triton does not specialise on
(``do_not_specialize``); strides keep their specialisation (unit stride and 16-divisibility give vector
loads), so a layout whose strides change alignment class with L compiles once per class, never per length.
A block never straddles a B/C group (the launcher picks BLOCK_D dividing dim/groups when groups > 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from retailsim.ops.selective_scan.contract import ScanForward, ScanGrads, groups_of

SOFTPLUS_THRESHOLD = 20.0
TILE_ELEMENTS = 4096  # BLOCK_D * N_PAD * CHUNK: what 8 warps hold in registers without spilling
CHUNK = 16        # steps per chunk: the forward checkpoints the state entering each, the backward rescans one
NUM_WARPS = 8     # backward
FWD_NUM_WARPS = 1
# Left to itself ptxas aims the 1-warp forward at 128 registers and, for some builds of the same source, spills
# (24 B on sm_90 bf16); allowed up to 255 it takes ~195 without spilling (still 10 CTAs/SM).
FWD_MAXNREG = 255


@triton.jit
def _affine_combine(a_left, h_left, a_right, h_right):
    # Composition of h -> a h + x maps: first the earlier (left) step, then the later (right) one.
    return a_left * a_right, h_left * a_right + h_right


@triton.jit
def _affine_combine_with_previous(a_left, h_left, prev_left, a_right, h_right, prev_right):
    # As _affine_combine, plus a third component that leaves out the last step's own drive: the scan then
    # yields a_t h_{t-1} directly, which h_t - x_t would lose to cancellation when a_t is tiny (huge Δ).
    return a_left * a_right, h_left * a_right + h_right, h_left * a_right + prev_right


@triton.jit
def _adjoint_combine(first_later, prod_later, acc_later, first_earlier, prod_earlier, acc_earlier):
    # Reverse scan of g_t = e_t + a_{t+1} g_{t+1}. A segment [t0, t1] is (a_{t0}, P, E) with
    # g_{t0} = E + P * (a_{t1+1} g_{t1+1}) and P = a_{t0+1} ... a_{t1}; the later segment's first decay
    # links the two. Triton's reverse scan passes the accumulated later segment first.
    link = prod_earlier * first_later
    return first_earlier, prod_later * link, acc_earlier + link * acc_later


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without a log1p primitive (w - 1 recovers the rounded exp), identity above 20.
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    exact = w == 1.0
    soft = tl.where(exact, e, tl.log(w) * (e / tl.where(exact, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, soft)


@triton.jit
def _load_chunk(p_u, p_delta, p_bias, p_B, p_C, i_b, i_g, o_d, o_l, m_d, m_l, o_n, m_n,
                stride_u_b, stride_u_d, stride_u_l, stride_dt_b, stride_dt_d, stride_dt_l,
                stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b, stride_C_g, stride_C_n, stride_C_l,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
    """u, Δ (before and after bias/softplus; 0 outside the data) as [BLOCK_D, CHUNK]; B, C as [N_PAD, CHUNK]."""
    m_dl = m_d[:, None] & m_l[None, :]
    b_u = tl.load(p_u + i_b * stride_u_b + o_d[:, None] * stride_u_d + o_l[None, :] * stride_u_l,
                  mask=m_dl, other=0.0).to(ACC)
    b_pre = tl.load(p_delta + i_b * stride_dt_b + o_d[:, None] * stride_dt_d + o_l[None, :] * stride_dt_l,
                    mask=m_dl, other=0.0).to(ACC)
    if HAS_BIAS:
        b_pre = b_pre + tl.load(p_bias + o_d, mask=m_d, other=0.0).to(ACC)[:, None]
    b_dt = b_pre
    if SOFTPLUS:
        b_dt = _softplus(b_pre)
    b_dt = tl.where(m_dl, b_dt, 0.0)  # padding steps: decay 1, drive 0, so the state passes through
    m_nl = m_n[:, None] & m_l[None, :]
    b_B = tl.load(p_B + i_b * stride_B_b + i_g * stride_B_g + o_n[:, None] * stride_B_n + o_l[None, :] * stride_B_l,
                  mask=m_nl, other=0.0).to(ACC)
    b_C = tl.load(p_C + i_b * stride_C_b + i_g * stride_C_g + o_n[:, None] * stride_C_n + o_l[None, :] * stride_C_l,
                  mask=m_nl, other=0.0).to(ACC)
    return b_u, b_pre, b_dt, b_B, b_C


@triton.jit
def _column(tile, o_t, t: tl.constexpr):
    # Column t of a [BLOCK_D, CHUNK] tile whose CHUNK axis each thread holds whole: a select the compiler folds
    # to register moves (adding -0.0 leaves every value, +0.0 included, unchanged).
    return tl.sum(tl.where(o_t[None, :] == t, tile, -0.0), axis=1)


@triton.jit
def _step_size(pre, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ from the raw input: + bias, then softplus when asked (any shape; ``bias`` broadcasts)."""
    if HAS_BIAS:
        pre = pre + bias
    dt = pre
    if SOFTPLUS:
        dt = _softplus(pre)
    return dt


@triton.jit
def _fwd_steps(
    p_u, p_delta, p_B, p_C, p_z, p_out, b_h, b_A2, b_Dv, b_bias, l0,
    o_d, m_d, o_n, m_n, o_t, base_u, base_dt, base_z, base_B, base_C, base_out,
    stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l, stride_B_n, stride_B_l,
    stride_C_n, stride_C_l, stride_out_d, stride_out_l, length,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    U_TILE: tl.constexpr, DT_TILE: tl.constexpr, Z_TILE: tl.constexpr,
    EVEN_N: tl.constexpr, MASK_L: tl.constexpr, BLOCK_D: tl.constexpr, SUB: tl.constexpr,
    ACC: tl.constexpr,
):
    """SUB steps of the recurrence from state b_h at step l0, each thread one channel with its N states in
    registers.

    A tensor contiguous along L (``*_TILE``) is read as a [BLOCK_D, SUB] tile, one vector load per thread (the
    layout that keeps a channel's steps in one thread); its columns are picked per step, and ``out`` follows
    u's layout. Any other layout is read step by step, one element per thread, coalesced across the channels
    when the tensor is contiguous along them. B_t and C_t ([N_PAD], the same for every channel of the block) are
    loaded per step. Without MASK_L every step is inside the sequence."""
    o_l = l0 + o_t
    if MASK_L:
        m_dl = m_d[:, None] & (o_l < length)[None, :]
    else:
        m_dl = m_d[:, None]
    if U_TILE:
        b_u = tl.load(p_u + base_u + o_d[:, None] * stride_u_d + o_l[None, :], mask=m_dl, other=0.0).to(ACC)
    if DT_TILE:
        b_pre = tl.load(p_delta + base_dt + o_d[:, None] * stride_dt_d + o_l[None, :], mask=m_dl, other=0.0)
        b_dt = tl.where(m_dl, _step_size(b_pre.to(ACC), b_bias[:, None], HAS_BIAS, SOFTPLUS), 0.0)
    b_y = tl.zeros([BLOCK_D, SUB], dtype=ACC)
    for t in tl.static_range(SUB):
        l = l0 + t
        if MASK_L:
            m_t = m_d & (o_d * 0 + l < length)  # a vector compare: the interpreter's masks must be vectors
        else:
            m_t = m_d
        if U_TILE:
            u_t = _column(b_u, o_t, t)
        else:
            u_t = tl.load(p_u + base_u + o_d * stride_u_d + l * stride_u_l, mask=m_t, other=0.0).to(ACC)
        if DT_TILE:
            dt_t = _column(b_dt, o_t, t)
        else:
            pre_t = tl.load(p_delta + base_dt + o_d * stride_dt_d + l * stride_dt_l, mask=m_t, other=0.0).to(ACC)
            dt_t = tl.where(m_t, _step_size(pre_t, b_bias, HAS_BIAS, SOFTPLUS), 0.0)
        if EVEN_N and not MASK_L:
            B_t = tl.load(p_B + base_B + o_n * stride_B_n + l * stride_B_l).to(ACC)
            C_t = tl.load(p_C + base_C + o_n * stride_C_n + l * stride_C_l).to(ACC)
        else:
            m_nt = m_n & (o_n * 0 + l < length)
            B_t = tl.load(p_B + base_B + o_n * stride_B_n + l * stride_B_l, mask=m_nt, other=0.0).to(ACC)
            C_t = tl.load(p_C + base_C + o_n * stride_C_n + l * stride_C_l, mask=m_nt, other=0.0).to(ACC)
        b_h = tl.exp2(dt_t[:, None] * b_A2) * b_h + (dt_t * u_t)[:, None] * B_t[None, :]
        y_t = tl.sum(b_h * C_t[None, :], axis=1)
        if HAS_D:
            y_t = y_t + b_Dv * u_t
        if HAS_Z:
            if not Z_TILE:
                z_t = tl.load(p_z + base_z + o_d * stride_z_d + l * stride_z_l, mask=m_t, other=0.0).to(ACC)
                y_t = y_t * z_t / (1.0 + tl.exp(-z_t))
        if U_TILE:
            b_y = tl.where(o_t[None, :] == t, y_t[:, None], b_y)
        else:
            tl.store(p_out + base_out + o_d * stride_out_d + l * stride_out_l, y_t.to(p_out.dtype.element_ty),
                     mask=m_t)
    if U_TILE:
        if HAS_Z:
            if Z_TILE:
                b_z = tl.load(p_z + base_z + o_d[:, None] * stride_z_d + o_l[None, :], mask=m_dl, other=0.0).to(ACC)
                b_y = b_y * b_z / (1.0 + tl.exp(-b_z))
        tl.store(p_out + base_out + o_d[:, None] * stride_out_d + o_l[None, :], b_y.to(p_out.dtype.element_ty),
                 mask=m_dl)
    return b_h


@triton.jit
def _fwd_chunk(
    p_u, p_delta, p_B, p_C, p_z, p_out, p_ckpt, b_h, b_A2, b_Dv, b_bias, i_c,
    o_d, m_d, o_n, m_n, m_dn, o_t, o_state, base_u, base_dt, base_z, base_B, base_C, base_out,
    stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l, stride_B_n, stride_B_l,
    stride_C_n, stride_C_l, stride_out_d, stride_out_l, dim, dstate, length,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, U_TILE: tl.constexpr, DT_TILE: tl.constexpr, Z_TILE: tl.constexpr,
    EVEN_N: tl.constexpr, MASK_L: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    SUB: tl.constexpr, ACC: tl.constexpr,
):
    """Chunk i_c: saves the state entering it, then runs its CHUNK steps SUB at a time."""
    N_PAD: tl.constexpr = b_h.shape[1]
    if SAVE_STATES:
        # One coalesced [BLOCK_D] store per state: a [BLOCK_D, N] store would get a vectorised layout of
        # its own and drag the state's layout (and every step's arithmetic) into it.
        p_state = p_ckpt + o_state + tl.cast(i_c, tl.int64) * (dstate * dim)  # int64: chunks x N x dim may pass 2^31
        for n in tl.static_range(N_PAD):
            tl.store(p_state + n * dim, _column(b_h, o_n, n), mask=m_d & (o_d * 0 + n < dstate))
    l0 = tl.cast(i_c, tl.int64) * CHUNK
    for i_s in tl.static_range(CHUNK // SUB):
        b_h = _fwd_steps(
            p_u, p_delta, p_B, p_C, p_z, p_out, b_h, b_A2, b_Dv, b_bias, l0 + i_s * SUB,
            o_d, m_d, o_n, m_n, o_t, base_u, base_dt, base_z, base_B, base_C, base_out,
            stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l, stride_B_n, stride_B_l,
            stride_C_n, stride_C_l, stride_out_d, stride_out_l, length,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, U_TILE, DT_TILE, Z_TILE, EVEN_N, MASK_L, BLOCK_D, SUB, ACC)
    return b_h


# Forward: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t; y_t = C_t·h_t + D u_t; out_t = y_t silu(z_t); exp is exp2 of
# Δ·(A·log2 e). Each thread owns one channel and runs its recurrence serially over time with the channel's N
# states in registers: no value crosses threads, so no shuffle or barrier per step (the layout the kernel
# report checks). Grid: (cdiv(dim, BLOCK_D), batch), BLOCK_D = 32 * num_warps. Saves the state entering every
# chunk for the backward.
@triton.jit(do_not_specialize=["length"])
def _selective_scan_fwd_kernel(
    p_u, p_delta, p_A, p_B, p_C, p_D, p_z, p_bias, p_out, p_last, p_ckpt,
    stride_u_b, stride_u_d, stride_u_l, stride_dt_b, stride_dt_d, stride_dt_l, stride_z_b, stride_z_d, stride_z_l,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_A_d, stride_A_n, stride_out_b, stride_out_d, stride_out_l,
    dim, dstate, length, dim_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr, U_TILE: tl.constexpr, DT_TILE: tl.constexpr, Z_TILE: tl.constexpr,
    EVEN_N: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
    SUB: tl.constexpr, ACC: tl.constexpr,
):
    i_d = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, N_PAD)
    o_t = tl.arange(0, SUB)
    m_d = o_d < dim
    m_n = o_n < dstate
    m_dn = m_d[:, None] & m_n[None, :]
    i_g = (i_d * BLOCK_D) // dim_per_group
    # A column by column ([BLOCK_D] loads, one channel per thread): a [BLOCK_D, N] load would be vectorised
    # along N, and the compiler would then convert every step's Δ to that layout rather than A once.
    b_A2 = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)
    for n in tl.static_range(N_PAD):
        a_n = tl.load(p_A + o_d * stride_A_d + n * stride_A_n, mask=m_d & (o_d * 0 + n < dstate), other=0.0)
        b_A2 = tl.where(o_n[None, :] == n, a_n.to(ACC)[:, None], b_A2)
    b_A2 = b_A2 * 1.4426950408889634  # log2(e): exp(Δ A) = exp2(Δ A log2 e)
    b_Dv = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(ACC)
    b_bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        b_bias = tl.load(p_bias + o_d, mask=m_d, other=0.0).to(ACC)
    b_h = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)
    n_chunks = tl.cdiv(length, CHUNK)
    n_full = length // CHUNK
    o_state = i_b * n_chunks * dstate * dim + o_d  # checkpoints (batch, chunk, N, dim), state 0 of chunk 0
    base_u, base_dt, base_z = i_b * stride_u_b, i_b * stride_dt_b, i_b * stride_z_b
    base_B, base_C = i_b * stride_B_b + i_g * stride_B_g, i_b * stride_C_b + i_g * stride_C_g
    base_out = i_b * stride_out_b
    # The full chunks without a length mask, then the partial one with it. (Two call sites: one loop over
    # both cases under tl.static_range compiled to 255 registers and a spill.)
    for i_c in range(0, n_full):
        b_h = _fwd_chunk(
            p_u, p_delta, p_B, p_C, p_z, p_out, p_ckpt, b_h, b_A2, b_Dv, b_bias, i_c,
            o_d, m_d, o_n, m_n, m_dn, o_t, o_state, base_u, base_dt, base_z, base_B, base_C, base_out,
            stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l, stride_B_n, stride_B_l,
            stride_C_n, stride_C_l, stride_out_d, stride_out_l, dim, dstate, length,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE_STATES, U_TILE, DT_TILE, Z_TILE,
            EVEN_N, False, BLOCK_D, CHUNK, SUB, ACC)
    if n_full < n_chunks:
        b_h = _fwd_chunk(
            p_u, p_delta, p_B, p_C, p_z, p_out, p_ckpt, b_h, b_A2, b_Dv, b_bias, n_full,
            o_d, m_d, o_n, m_n, m_dn, o_t, o_state, base_u, base_dt, base_z, base_B, base_C, base_out,
            stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l, stride_B_n, stride_B_l,
            stride_C_n, stride_C_l, stride_out_d, stride_out_l, dim, dstate, length,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE_STATES, U_TILE, DT_TILE, Z_TILE,
            EVEN_N, True, BLOCK_D, CHUNK, SUB, ACC)
    tl.store(p_last + (i_b * dim + o_d)[:, None] * dstate + o_n[None, :], b_h, mask=m_dn)


# Backward: with dy_t = dout_t silu(z_t), the adjoint g_t = dL/dh_t obeys g_t = C_t dy_t + a_{t+1} g_{t+1}
# (a_t = exp(Δ_t A)); then dx_t = g_t, d(a_t)·a_t... gives
#   dΔ_t = Σ_n g_t (A a_t h_{t-1} + B_t u_t),  dA = Σ_t g_t a_t h_{t-1} Δ_t,  dB_t = Σ_d g_t Δ_t u_t,
#   dC_t = Σ_d dy_t h_t,  du_t = Σ_n g_t Δ_t B_t + D dy_t,  dz_t = dout_t y_t silu'(z_t),
# with a_t h_{t-1} from its own scan component (not h_t - x_t, which cancels). Chunks run last to first: each recomputes
# its states from the checkpoint the forward saved, and the adjoint carried in from the chunk after it.
# Sums over channels (dB, dC) and over batch/time (dA, dD, dΔ-bias) leave per-program partials that torch
# sums afterwards in a fixed order: deterministic, no atomics. Grid: (cdiv(dim, BLOCK_D), batch).
@triton.jit(do_not_specialize=["length"])
def _selective_scan_bwd_kernel(
    p_dout, p_u, p_delta, p_A, p_B, p_C, p_D, p_z, p_bias, p_ckpt,
    p_du, p_ddelta, p_dz, p_dA_part, p_dB_part, p_dC_part, p_dD_part, p_dbias_part,
    stride_do_b, stride_do_d, stride_do_l,
    stride_u_b, stride_u_d, stride_u_l, stride_dt_b, stride_dt_d, stride_dt_l, stride_z_b, stride_z_d, stride_z_l,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_A_d, stride_A_n,
    dim, dstate, length, dim_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    i_d = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    n_dblocks = tl.num_programs(0).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, N_PAD)
    o_t = tl.arange(0, CHUNK)
    m_d = o_d < dim
    m_n = o_n < dstate
    m_dn = m_d[:, None] & m_n[None, :]
    i_g = (i_d * BLOCK_D) // dim_per_group
    b_A = tl.load(p_A + o_d[:, None] * stride_A_d + o_n[None, :] * stride_A_n, mask=m_dn, other=0.0).to(ACC)
    b_A2 = b_A * 1.4426950408889634
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(ACC)
    b_carry = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)   # a_{t+1} g_{t+1} entering the chunk from the right
    b_dA = tl.zeros([BLOCK_D, N_PAD], dtype=ACC)
    b_dD = tl.zeros([BLOCK_D], dtype=ACC)
    b_dbias = tl.zeros([BLOCK_D], dtype=ACC)
    n_chunks = tl.cdiv(length, CHUNK)
    o_state = i_b * n_chunks * dstate * dim + o_n[None, :] * dim + o_d[:, None]  # (batch, chunk, N, dim)
    o_part = ((i_b * n_dblocks + i_d) * dstate + o_n)[:, None] * length          # [N_PAD, 1]
    for i_k in range(0, n_chunks):
        i_c = n_chunks - 1 - i_k
        o_l = (i_c * CHUNK + o_t).to(tl.int64)
        m_l = o_l < length
        m_dl = m_d[:, None] & m_l[None, :]
        b_u, b_pre, b_dt, b_B, b_C = _load_chunk(
            p_u, p_delta, p_bias, p_B, p_C, i_b, i_g, o_d, o_l, m_d, m_l, o_n, m_n,
            stride_u_b, stride_u_d, stride_u_l, stride_dt_b, stride_dt_d, stride_dt_l,
            stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b, stride_C_g, stride_C_n, stride_C_l,
            HAS_BIAS, SOFTPLUS, ACC)
        b_h0 = tl.load(p_ckpt + o_state + tl.cast(i_c, tl.int64) * (dstate * dim), mask=m_dn, other=0.0).to(ACC)
        b_a = tl.exp2(b_dt[:, None, :] * b_A2[:, :, None])                 # [BLOCK_D, N_PAD, CHUNK]
        b_x = (b_dt * b_u)[:, None, :] * b_B[None, :, :]
        b_decay, b_hs, b_ah = tl.associative_scan((b_a, b_x, tl.zeros_like(b_x)), axis=2,
                                                  combine_fn=_affine_combine_with_previous)
        b_hs = b_hs + b_decay * b_h0[:, :, None]                           # h_t
        b_ah = b_ah + b_decay * b_h0[:, :, None]                           # a_t h_{t-1}
        o_bdl = (i_b * dim + o_d)[:, None] * length + o_l[None, :]
        b_dout = tl.load(p_dout + i_b * stride_do_b + o_d[:, None] * stride_do_d + o_l[None, :] * stride_do_l,
                         mask=m_dl, other=0.0).to(ACC)
        b_dy = b_dout
        if HAS_Z:
            b_z = tl.load(p_z + i_b * stride_z_b + o_d[:, None] * stride_z_d + o_l[None, :] * stride_z_l,
                          mask=m_dl, other=0.0).to(ACC)
            b_y = tl.sum(b_hs * b_C[None, :, :], axis=1)
            if HAS_D:
                b_y = b_y + b_Dv[:, None] * b_u
            b_sig = 1.0 / (1.0 + tl.exp(-b_z))
            b_dz = b_dout * b_y * b_sig * (1.0 + b_z * (1.0 - b_sig))
            tl.store(p_dz + o_bdl, b_dz.to(p_dz.dtype.element_ty), mask=m_dl)
            b_dy = b_dout * b_z * b_sig
        b_e = b_dy[:, None, :] * b_C[None, :, :]
        b_e = b_e + tl.where(o_t[None, None, :] == CHUNK - 1, b_carry[:, :, None], 0.0)
        _, _, b_g = tl.associative_scan((b_a, tl.full(b_a.shape, 1.0, ACC), b_e), axis=2,
                                        combine_fn=_adjoint_combine, reverse=True)
        b_carry = tl.sum(tl.where(o_t[None, None, :] == 0, b_a * b_g, 0.0), axis=2)
        b_gah = b_g * b_ah                                                  # g_t a_t h_{t-1}
        b_gB = tl.sum(b_g * b_B[None, :, :], axis=1)                        # [BLOCK_D, CHUNK]
        b_ddt = tl.sum(b_gah * b_A[:, :, None], axis=1) + b_gB * b_u
        b_dA += tl.sum(b_gah * b_dt[:, None, :], axis=2)
        b_du = b_gB * b_dt
        if HAS_D:
            b_du = b_du + b_dy * b_Dv[:, None]
            b_dD += tl.sum(b_dy * b_u, axis=1)
        if SOFTPLUS:
            b_ddt = b_ddt * tl.where(b_pre > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-b_pre)))
        b_ddt = tl.where(m_dl, b_ddt, 0.0)
        if HAS_BIAS:
            b_dbias += tl.sum(b_ddt, axis=1)
        tl.store(p_du + o_bdl, b_du.to(p_du.dtype.element_ty), mask=m_dl)
        tl.store(p_ddelta + o_bdl, b_ddt.to(p_ddelta.dtype.element_ty), mask=m_dl)
        m_nl = m_n[:, None] & m_l[None, :]
        b_dB = tl.sum(b_g * (b_dt * b_u)[:, None, :], axis=0)               # [N_PAD, CHUNK]
        b_dC = tl.sum(b_hs * b_dy[:, None, :], axis=0)
        tl.store(p_dB_part + o_part + o_l[None, :], b_dB, mask=m_nl)
        tl.store(p_dC_part + o_part + o_l[None, :], b_dC, mask=m_nl)
    o_bd = i_b * dim + o_d
    tl.store(p_dA_part + o_bd[:, None] * dstate + o_n[None, :], b_dA, mask=m_dn)
    if HAS_D:
        tl.store(p_dD_part + o_bd, b_dD, mask=m_d)
    if HAS_BIAS:
        tl.store(p_dbias_part + o_bd, b_dbias, mask=m_d)


def _acc_dtype(u: torch.Tensor):
    return (tl.float64, torch.float64) if u.dtype == torch.float64 else (tl.float32, torch.float32)


def _io_dtype(x: torch.Tensor, acc_torch: torch.dtype) -> torch.dtype:
    """Kernels write outputs and gradients in their tensor's dtype on the GPU. The interpreter (CPU tensors)
    truncates float32 to bfloat16 instead of rounding, so there they write ACC and torch rounds."""
    return x.dtype if x.is_cuda else acc_torch


def _inside_group(block_d: int, dim: int, groups: int) -> int:
    """The largest power-of-two block not above ``block_d`` that divides dim / groups: a block of channels then
    never straddles a B/C group."""
    if groups > 1:
        per_group = dim // groups
        while per_group % block_d:
            block_d //= 2
    return block_d


def _fwd_block(dim: int, groups: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the forward: one channel per thread, one warp per program (the most programs per
    SM; the recurrence's N independent chains give each warp its own instruction-level parallelism); a block
    stays inside one B/C group, and a small dim takes a smaller block."""
    return _inside_group(min(32 * FWD_NUM_WARPS, triton.next_power_of_2(dim)), dim, groups), FWD_NUM_WARPS


def _config(dim: int, dstate: int, groups: int) -> tuple[int, int]:
    """(BLOCK_D, N_PAD) of the backward: the tile holds about TILE_ELEMENTS; a block stays inside one group."""
    n_pad = max(2, triton.next_power_of_2(dstate))
    block_d = max(1, min(16, TILE_ELEMENTS // (n_pad * CHUNK), triton.next_power_of_2(dim)))
    return _inside_group(block_d, dim, groups), n_pad


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None, groups: int = 1) -> dict:
    """The tiles, warps and grid each kernel launches with for (batch, dim, L, N), keyed by kernel name: the
    same on every arch today."""
    batch, dim, length, dstate = shape
    block_d, n_pad = _config(dim, dstate, groups)
    fwd_block, fwd_warps = _fwd_block(dim, groups)
    return {"N_PAD": n_pad, "CHUNK": CHUNK,
            "_selective_scan_fwd_kernel": {"BLOCK_D": fwd_block, "num_warps": fwd_warps, "maxnreg": FWD_MAXNREG,
                                           "grid": (triton.cdiv(dim, fwd_block), batch)},
            "_selective_scan_bwd_kernel": {"BLOCK_D": block_d, "num_warps": NUM_WARPS,
                                           "grid": (triton.cdiv(dim, block_d), batch)}}


def checkpoint_shape(batch: int, dim: int, length: int, dstate: int, groups: int, save_states: bool = True) -> tuple:
    """The state entering every CHUNK-step chunk, (batch, n_chunks, N, dim): contiguous along the channels, so
    that the forward's thread-per-channel stores coalesce; a 1-element stand-in unsaved."""
    return (batch, triton.cdiv(length, CHUNK), dstate, dim) if save_states else (1,)


def _bc_strides(BC: torch.Tensor) -> tuple[int, int, int, int]:
    if BC.dim() == 3:
        return BC.stride(0), 0, BC.stride(1), BC.stride(2)
    return BC.stride(0), BC.stride(1), BC.stride(2), BC.stride(3)


def _common(u, delta, A, B, C, z):
    batch, dim, length = u.shape
    dstate = A.shape[1]
    groups = groups_of(B, C)
    config = config_for((batch, dim, length, dstate), u.dtype, groups=groups)
    n_pad = config["N_PAD"]
    z_strides = z.stride() if z is not None else (0, 0, 0)
    strides = dict(
        stride_u_b=u.stride(0), stride_u_d=u.stride(1), stride_u_l=u.stride(2),
        stride_dt_b=delta.stride(0), stride_dt_d=delta.stride(1), stride_dt_l=delta.stride(2),
        stride_z_b=z_strides[0], stride_z_d=z_strides[1], stride_z_l=z_strides[2],
        stride_A_d=A.stride(0), stride_A_n=A.stride(1),
        **dict(zip(("stride_B_b", "stride_B_g", "stride_B_n", "stride_B_l"), _bc_strides(B))),
        **dict(zip(("stride_C_b", "stride_C_g", "stride_C_n", "stride_C_l"), _bc_strides(C))),
        dim=dim, dstate=dstate, length=length, dim_per_group=dim // groups,
    )
    return batch, dim, length, dstate, groups, n_pad, strides, config


def _sub_steps(u: torch.Tensor) -> int:
    """Steps per tile of the forward: 4 (a 64-bit bf16 / 128-bit fp32 vector per thread), 2 for float64. Eight
    bf16 steps (one 128-bit load) let ptxas hoist eight steps' B/C loads and spill on sm_80 and sm_90."""
    return max(1, min(4, 16 // u.element_size()))


def _along_time(x: torch.Tensor | None) -> bool:
    """Whether (batch, dim, L) ``x`` is contiguous along L, so that the forward reads it in per-thread tiles."""
    return x is not None and (x.stride(2) == 1 or x.shape[2] == 1)


def forward(*, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
            save_states=True) -> ScanForward:
    """out in u's dtype on the GPU and in u's layout (contiguous along L, or along the channels when u is, as
    the model's transposed projections are), last_state (batch, dim, N), the chunk-start states when
    ``save_states``."""
    batch, dim, length, dstate, groups, n_pad, strides, config = _common(u, delta, A, B, C, z)
    launch = config["_selective_scan_fwd_kernel"]
    acc_tl, acc_torch = _acc_dtype(u)
    save = bool(save_states)
    u_tile = _along_time(u)  # then out is written in tiles too: it takes u's layout
    out_dtype = _io_dtype(u, acc_torch)
    if u_tile:
        out = torch.empty((batch, dim, length), dtype=out_dtype, device=u.device)
    else:
        out = torch.empty((batch, length, dim), dtype=out_dtype, device=u.device).transpose(1, 2)
    last_state = torch.empty((batch, dim, dstate), dtype=acc_torch, device=u.device)
    checkpoints = torch.empty(checkpoint_shape(batch, dim, length, dstate, groups, save), dtype=acc_torch,
                              device=u.device)
    D_arg = D.contiguous() if D is not None else out
    bias_arg = delta_bias.contiguous() if delta_bias is not None else out
    _selective_scan_fwd_kernel[launch["grid"]](
        p_u=u, p_delta=delta, p_A=A, p_B=B, p_C=C, p_D=D_arg, p_z=z if z is not None else u, p_bias=bias_arg,
        p_out=out, p_last=last_state, p_ckpt=checkpoints, **strides,
        stride_out_b=out.stride(0), stride_out_d=out.stride(1), stride_out_l=out.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        SAVE_STATES=save, U_TILE=u_tile, DT_TILE=_along_time(delta), Z_TILE=u_tile and _along_time(z),
        EVEN_N=n_pad == dstate, BLOCK_D=launch["BLOCK_D"], N_PAD=n_pad, CHUNK=CHUNK,
        SUB=_sub_steps(u), ACC=acc_tl, num_warps=launch["num_warps"], maxnreg=launch["maxnreg"],
    )
    return ScanForward(out, last_state, checkpoints)


def backward(*, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             checkpoints) -> ScanGrads:
    """Every gradient; du/ddelta/dz in their inputs' dtypes on the GPU."""
    batch, dim, length, dstate, groups, n_pad, strides, config = _common(u, delta, A, B, C, z)
    launch = config["_selective_scan_bwd_kernel"]
    block_d, grid = launch["BLOCK_D"], launch["grid"]
    acc_tl, acc_torch = _acc_dtype(u)
    device = u.device
    n_dblocks = grid[0]
    du = torch.empty((batch, dim, length), dtype=_io_dtype(u, acc_torch), device=device)
    ddelta = torch.empty((batch, dim, length), dtype=_io_dtype(delta, acc_torch), device=device)
    dz = torch.empty((batch, dim, length), dtype=_io_dtype(z, acc_torch), device=device) if z is not None else None
    dA_part = torch.empty((batch, dim, dstate), dtype=acc_torch, device=device)
    dB_part = torch.empty((batch, n_dblocks, dstate, length), dtype=acc_torch, device=device)
    dC_part = torch.empty_like(dB_part)
    dD_part = torch.empty((batch, dim), dtype=acc_torch, device=device) if D is not None else None
    dbias_part = torch.empty((batch, dim), dtype=acc_torch, device=device) if delta_bias is not None else None
    _selective_scan_bwd_kernel[grid](
        p_dout=dout, p_u=u, p_delta=delta, p_A=A, p_B=B, p_C=C,
        p_D=D.contiguous() if D is not None else du, p_z=z if z is not None else u,
        p_bias=delta_bias.contiguous() if delta_bias is not None else du, p_ckpt=checkpoints,
        p_du=du, p_ddelta=ddelta, p_dz=dz if dz is not None else du, p_dA_part=dA_part,
        p_dB_part=dB_part, p_dC_part=dC_part,
        p_dD_part=dD_part if dD_part is not None else dA_part,
        p_dbias_part=dbias_part if dbias_part is not None else dA_part,
        stride_do_b=dout.stride(0), stride_do_d=dout.stride(1), stride_do_l=dout.stride(2), **strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=block_d, N_PAD=n_pad, CHUNK=CHUNK, ACC=acc_tl, num_warps=launch["num_warps"],
    )
    dB = _reduce_channel_blocks(dB_part, B, groups)
    dC = _reduce_channel_blocks(dC_part, C, groups)
    return ScanGrads(
        du=du, ddelta=ddelta, dA=dA_part.sum(0), dB=dB, dC=dC,
        dD=dD_part.sum(0) if dD_part is not None else None,
        dz=dz,
        ddelta_bias=dbias_part.sum(0) if dbias_part is not None else None,
    )


def _reduce_channel_blocks(part: torch.Tensor, BC: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, channel blocks, N, L) partials -> B/C's own shape; blocks are group-major and equal per group."""
    if BC.dim() == 3:
        return part.sum(1)
    batch, n_blocks, dstate, length = part.shape
    return part.view(batch, groups, n_blocks // groups, dstate, length).sum(2)
