"""Triton kernels of the selective scan and their launchers (contract in ``contract.py``).

Forward: one program per (block of BLOCK_D = 32 * num_warps channels, batch element), one channel per
thread, the channel's N states in registers; the recurrence runs serially over time, so nothing crosses
threads inside the loop (no shuffle, no barrier: the kernel report checks the SASS). It saves the state
entering every CHUNK-step chunk. Backward: the same mapping (one warp, one channel per thread) walking the
chunks last to first and, inside each, the states one at a time: the chunk's states recomputed serially
from the forward's checkpoint, then the adjoint serially backwards. State in ``ACC`` (float32; float64 only for
float64 inputs, which the gradcheck uses). L is a runtime argument that Triton does not specialise on
(``do_not_specialize``); strides keep their specialisation (unit stride and 16-divisibility give vector
loads), so a layout whose strides change alignment class with L compiles once per class, never per length.
A block never straddles a B/C group (the launcher picks BLOCK_D dividing dim/groups when groups > 1).
"""
from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from retailsim.ops.selective_scan.contract import ScanForward, ScanGrads, groups_of

SOFTPLUS_THRESHOLD = 20.0
CHUNK = 16        # steps per chunk: the forward checkpoints the state entering each, the backward rescans one
FWD_NUM_WARPS = 1
BWD_NUM_WARPS = 1
# Left to itself ptxas aims a 1-warp kernel at 128 registers and, for some builds of the same source, spills
# (24 B on sm_90 bf16 in the forward); allowed up to 255 it takes what it needs (still >= 8 CTAs/SM).
MAXNREG = 255


# Triton 3.9 has approximate fp32 division (``div.approx.f32``: RCP + FMUL, 2 ulp for denominators in
# [2^-126, 2^126]); older ones (the GPU image's 3.6) fall back to ``/`` (``div.full.f32``, ~9 instructions).
APPROX_DIV = tl.constexpr("approx" in inspect.signature(tl.math.fdiv).parameters)


@triton.jit
def _div(a, b):
    """a / b, approximate in float32 where Triton offers it (every denominator here lies in [1, e^20 + 1])."""
    if APPROX_DIV and b.dtype == tl.float32:
        return tl.math.fdiv(a, b, approx=True)
    else:
        return a / b


@triton.jit
def _exp(x):
    # exp as exp2 of x log2(e): ptxas emits the bare MUFU for it, where tl.exp's ex2 carries a denormal guard
    # (4 more instructions); results below 2^-126 flush to zero.
    return tl.exp2(x * 1.4426950408889634)


@triton.jit
def _sigmoid(x):
    return _div(1.0, 1.0 + _exp(-x))


@triton.jit
def _softplus(x):
    """log(1 + e^x), x above 20 passing through: log1p(exp(x)) without a log1p primitive (w - 1 recovers the
    rounded exp). Its log is libdevice's inlined polynomial (~20 instructions; Triton has no bare lg2)."""
    e = _exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    exact = w == 1.0
    soft = tl.where(exact, e, tl.log(w) * _div(e, tl.where(exact, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, soft)


@triton.jit
def _softplus_series(x):
    """The same without a log, in float32: max(x, 0) + log1p(y), y = e^-|x|, with log1p(y) = 2 atanh(s) =
    2 (s + s^3/3 + ... + s^13/13), s = y / (2 + y) <= 1/3; the series' remainder is below 2e-8 of the result.
    About 15 instructions instead of about 40 (kernel report). float64 (the gradcheck's) takes ``_softplus``."""
    if x.dtype == tl.float32:
        y = _exp(-tl.abs(x))
        s = _div(y, 2.0 + y)
        s2 = s * s
        p = s2 * (1.0 / 13.0) + (1.0 / 11.0)
        p = p * s2 + (1.0 / 9.0)
        p = p * s2 + (1.0 / 7.0)
        p = p * s2 + (1.0 / 5.0)
        p = p * s2 + (1.0 / 3.0)
        p = p * s2 + 1.0
        return tl.maximum(x, 0.0) + 2.0 * s * p
    else:
        return _softplus(x)


@triton.jit
def _column(tile, o_t, t: tl.constexpr):
    # Column t of a [BLOCK_D, CHUNK] tile whose CHUNK axis each thread holds whole: a select the compiler folds
    # to register moves (adding -0.0 leaves every value, +0.0 included, unchanged).
    return tl.sum(tl.where(o_t[None, :] == t, tile, -0.0), axis=1)


@triton.jit
def _step_size(pre, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SERIES: tl.constexpr = False):
    """Δ from the raw input: + bias, then softplus when asked (any shape; ``bias`` broadcasts). The backward
    takes the log-free series (SERIES); in the forward the series' extra registers made ptxas spill (24 B,
    sm_90 bf16), so the forward keeps the log. The two agree to float32 rounding."""
    if HAS_BIAS:
        pre = pre + bias
    dt = pre
    if SOFTPLUS:
        if SERIES:
            dt = _softplus_series(pre)
        else:
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
                y_t = y_t * z_t * _sigmoid(z_t)
        if U_TILE:
            b_y = tl.where(o_t[None, :] == t, y_t[:, None], b_y)
        else:
            tl.store(p_out + base_out + o_d * stride_out_d + l * stride_out_l, y_t.to(p_out.dtype.element_ty),
                     mask=m_t)
    if U_TILE:
        if HAS_Z:
            if Z_TILE:
                b_z = tl.load(p_z + base_z + o_d[:, None] * stride_z_d + o_l[None, :], mask=m_dl, other=0.0).to(ACC)
                b_y = b_y * b_z * _sigmoid(b_z)
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


@triton.jit
def _row(tile, o_t, t: tl.constexpr):
    # Step t of a [CHUNK, BLOCK_D] tile. The default layout of that shape puts the channels across the lanes and
    # the steps in each thread's registers, so this select folds to register moves.
    return tl.sum(tl.where(o_t[:, None] == t, tile, -0.0), axis=0)


@triton.jit
def _put(tile, o_t, t: tl.constexpr, value):
    # Step t of such a tile set to ``value``.
    return tl.where(o_t[:, None] == t, value[None, :], tile)


@triton.jit
def _add_to(tile, o_t, t: tl.constexpr, value):
    # Step t of such a tile plus ``value``, the other steps unchanged (+ -0.0 leaves every value as it is).
    return tile + tl.where(o_t[:, None] == t, value[None, :], -0.0)


@triton.jit
def _halve(tile, o_lane, BIT: tl.constexpr):
    # [R, W] -> [R / 2, W], one step of a reduce-scatter across the lanes: a lane whose BIT is clear keeps the
    # first half of the rows and adds the partner's (lane ^ BIT) first half to it, a lane whose BIT is set keeps
    # and adds the second halves. One shuffle per kept row (a warp-local gather).
    R: tl.constexpr = tile.shape[0]
    W: tl.constexpr = tile.shape[1]
    lo, hi = tl.split(tl.permute(tl.reshape(tile, [2, R // 2, W]), [1, 2, 0]))
    upper = ((o_lane & BIT) != 0)[None, :]
    partner = (o_lane ^ BIT)[None, :] + tl.zeros([R // 2, W], dtype=tl.int32)
    return tl.where(upper, hi, lo) + tl.gather(tl.where(upper, lo, hi), partner, 1)


@triton.jit
def _lane_sums(tile, o_lane):
    """Σ over the lanes of each step of a [16, 32] tile (steps in registers, one lane per column), as a [32]
    vector whose lane l holds step l // 2: 16 shuffles, where a reduction per step is 16 butterflies of 5."""
    s = _halve(_halve(_halve(_halve(tile, o_lane, 16), o_lane, 8), o_lane, 4), o_lane, 2)
    v = tl.reshape(s, [tile.shape[1]])
    return v + tl.gather(v, o_lane ^ 1, 0)


@triton.jit
def _bwd_state(
    p_A, p_B, p_C, p_ckpt, p_dB, p_dC, p_carry, p_dA, b_dt, b_x, b_dy, b_y, b_sA, b_gB,
    n, l0, o_d, m_d, m_later, o_t, o_state, o_nd,
    stride_A_d, stride_A_n, stride_B_n, stride_B_l, stride_C_n, stride_C_l, dim, length,
    HAS_Z: tl.constexpr, SCATTER: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    """State n of one chunk, each thread one channel: the chunk's states recomputed forward from the checkpoint,
    then the adjoint backward. The sums over n (du, dΔ, y) accumulate in the thread's registers; the sums over
    the block's channels (dB_t, dC_t) are, with a 32-channel block (SCATTER), one reduce-scatter of the chunk's
    16 products across the lanes (``_lane_sums``), else one lane reduction per step; one store each per state
    and chunk (a store per step, behind a branch, costs more: kernel report)."""
    a2 = tl.load(p_A + o_d * stride_A_d + n * stride_A_n, mask=m_d, other=0.0).to(ACC) * 1.4426950408889634
    b_h = tl.load(p_ckpt + o_state + n * dim, mask=m_d, other=0.0).to(ACC)
    b_ah = tl.zeros_like(b_dt)
    # B_n and C_n over the chunk as [CHUNK, BLOCK_D] tiles, read once for both sweeps: with SCATTER one [32]
    # load (lane l: B at step l, C at step l - 16) broadcast by shuffles, else one broadcast load per step
    # (every lane reads the same address). In a partial chunk steps past the end read the last
    # step's (a clamped address, no mask): there Δ = 0 and dy = 0, so the state passes through unchanged and nothing from them is stored.
    # (p_B, p_C, p_dB, p_dC point at this program's batch, group and channel block.)
    if SCATTER:
        o_lane = tl.arange(0, 2 * CHUNK)
        o_bc = tl.minimum(l0 + o_lane % CHUNK, length - 1)
        v_BC = tl.load(tl.where(o_lane < CHUNK, p_B + (n * stride_B_n + o_bc * stride_B_l),
                                p_C + (n * stride_C_n + o_bc * stride_C_l))).to(ACC)
        b_B = tl.zeros_like(b_dt)
        b_C = tl.zeros_like(b_dt)
        for t in tl.static_range(CHUNK):
            b_B = _put(b_B, o_t, t, tl.gather(v_BC, o_lane * 0 + t, 0))
            b_C = _put(b_C, o_t, t, tl.gather(v_BC, o_lane * 0 + (t + CHUNK), 0))
    else:
        o_bc = tl.minimum(l0 + o_t, length - 1)
        o_bc = o_bc[:, None] + o_d[None, :] * 0
        b_B = tl.load(p_B + (n * stride_B_n + o_bc * stride_B_l)).to(ACC)
        b_C = tl.load(p_C + (n * stride_C_n + o_bc * stride_C_l)).to(ACC)
    if SCATTER:
        b_pC = tl.zeros_like(b_dt)   # h_t dy_t, summed over the lanes after the sweep
    else:
        v_dC = tl.zeros([CHUNK], dtype=ACC)
    for t in tl.static_range(CHUNK):
        B_t = _row(b_B, o_t, t)
        ah_t = tl.exp2(_row(b_dt, o_t, t) * a2) * b_h      # a_t h_{t-1}, kept for dΔ and dA
        b_h = ah_t + _row(b_x, o_t, t) * B_t
        b_ah = _put(b_ah, o_t, t, ah_t)
        if SCATTER:
            b_pC = _put(b_pC, o_t, t, b_h * _row(b_dy, o_t, t))
        else:
            v_dC = tl.where(o_t == t, tl.sum(b_h * _row(b_dy, o_t, t), axis=0), v_dC)
        if HAS_Z:
            b_y = _add_to(b_y, o_t, t, b_h * _row(b_C, o_t, t))
    if SCATTER:
        # dC now, not after the reverse sweep: its product tile's registers are then free for that sweep's.
        o_lane = tl.arange(0, 2 * CHUNK)
        o_l = l0 + o_lane // 2
        m_l = (o_lane % 2 == 0) & (o_l < length)
        tl.store(p_dC + n * length + o_l, _lane_sums(b_pC, o_lane), mask=m_l)
    # a_{t+1} g_{t+1} from the chunk after; the last chunk (processed first) starts from zero, and so does dA.
    b_ag = tl.load(p_carry + o_nd + n * dim, mask=m_later, other=0.0)
    b_da = tl.load(p_dA + o_nd + n * dim, mask=m_later, other=0.0)
    if SCATTER:
        b_pB = tl.zeros_like(b_dt)   # g_t Δ_t u_t
    else:
        v_dB = tl.zeros([CHUNK], dtype=ACC)
    for r in tl.static_range(CHUNK - 1, -1, -1):
        B_t = _row(b_B, o_t, r)
        C_t = _row(b_C, o_t, r)
        dt_r = _row(b_dt, o_t, r)
        g_t = _row(b_dy, o_t, r) * C_t + b_ag
        b_ag = tl.exp2(dt_r * a2) * g_t   # the forward sweep's a_t: the compiler keeps it, no second exp2
        gah_t = g_t * _row(b_ah, o_t, r)
        b_sA = _add_to(b_sA, o_t, r, gah_t * a2)
        b_gB = _add_to(b_gB, o_t, r, g_t * B_t)
        b_da = b_da + gah_t * dt_r
        if SCATTER:
            b_pB = _put(b_pB, o_t, r, g_t * _row(b_x, o_t, r))
        else:
            v_dB = tl.where(o_t == r, tl.sum(g_t * _row(b_x, o_t, r), axis=0), v_dB)
    if SCATTER:
        tl.store(p_dB + n * length + o_l, _lane_sums(b_pB, o_lane), mask=m_l)
    else:
        o_l = l0 + o_t
        tl.store(p_dC + n * length + o_l, v_dC, mask=o_l < length)
        tl.store(p_dB + n * length + o_l, v_dB, mask=o_l < length)
    # The carry and dA live in per-program scratch, each thread reading back only what it wrote.
    tl.store(p_carry + o_nd + n * dim, b_ag, mask=m_d)
    tl.store(p_dA + o_nd + n * dim, b_da, mask=m_d)
    return b_y, b_sA, b_gB


@triton.jit
def _bwd_chunk(
    p_dout, p_u, p_delta, p_A, p_B, p_C, p_z, p_ckpt, p_du, p_ddelta, p_dz, p_dA_part, p_dB_part, p_dC_part,
    p_carry, b_Dv, b_bias, b_dD, b_dbias, i_k, n_chunks, o_d, m_d, o_t, o_nd, o_part, i_b,
    base_u, base_dt, base_z, base_do, base_B, base_C, base_g,
    stride_do_d, stride_do_l, stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l,
    stride_B_n, stride_B_l, stride_C_n, stride_C_l, stride_A_d, stride_A_n, stride_g_d, stride_g_l,
    dim, dstate, length,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    """Chunk n_chunks - 1 - i_k (the i_k-th processed): its inputs, the states one at a time, its gradients."""
    i_c = n_chunks - 1 - i_k
    l0 = tl.cast(i_c, tl.int64) * CHUNK
    # The chunk's inputs one step (column) at a time: coalesced across the channels when a tensor is
    # contiguous along them, and a channel's steps stay in its thread whatever the layout.
    # u itself is not kept (Δu is): it is read again, from cache, when the chunk's gradients are written.
    b_dt = tl.zeros([CHUNK, BLOCK_D], dtype=ACC)
    b_x = tl.zeros_like(b_dt)
    b_dy = tl.zeros_like(b_dt)
    for t in tl.static_range(CHUNK):
        l = l0 + t
        m_t = m_d & (o_d * 0 + l < length)
        u_t = tl.load(p_u + base_u + o_d * stride_u_d + l * stride_u_l, mask=m_t, other=0.0).to(ACC)
        pre_t = tl.load(p_delta + base_dt + o_d * stride_dt_d + l * stride_dt_l, mask=m_t, other=0.0).to(ACC)
        dy_t = tl.load(p_dout + base_do + o_d * stride_do_d + l * stride_do_l, mask=m_t, other=0.0).to(ACC)
        if HAS_Z:
            z_t = tl.load(p_z + base_z + o_d * stride_z_d + l * stride_z_l, mask=m_t, other=0.0).to(ACC)
            dy_t = dy_t * z_t * _sigmoid(z_t)
        dt_t = tl.where(m_t, _step_size(pre_t, b_bias, HAS_BIAS, SOFTPLUS, True), 0.0)
        b_dt = _put(b_dt, o_t, t, dt_t)
        b_x = _put(b_x, o_t, t, dt_t * u_t)
        b_dy = _put(b_dy, o_t, t, dy_t)
    b_y = tl.zeros_like(b_dt)    # Σ_n C_t h_t, for dz
    b_sA = tl.zeros_like(b_dt)   # Σ_n g_t a_t h_{t-1} A log2(e)
    b_gB = tl.zeros_like(b_dt)   # Σ_n g_t B_t
    m_later = m_d & (o_d * 0 + i_k > 0)   # a chunk after this one has left a carry (and a dA) in scratch
    o_state = (i_b * n_chunks + i_c) * dstate * dim + o_d   # checkpoints (batch, chunk, N, dim)
    for n in range(0, dstate):
        b_y, b_sA, b_gB = _bwd_state(
            p_A, p_B + base_B, p_C + base_C, p_ckpt, p_dB_part + o_part, p_dC_part + o_part, p_carry,
            p_dA_part, b_dt, b_x, b_dy, b_y, b_sA, b_gB,
            n, i_c * CHUNK, o_d, m_d, m_later, o_t, o_state, o_nd,
            stride_A_d, stride_A_n, stride_B_n, stride_B_l, stride_C_n, stride_C_l, dim, length,
            HAS_Z, BLOCK_D == 2 * CHUNK, CHUNK, ACC)
    for t in tl.static_range(CHUNK):
        l = l0 + t
        m_t = m_d & (o_d * 0 + l < length)
        o_g = base_g + o_d * stride_g_d + l * stride_g_l
        u_t = tl.load(p_u + base_u + o_d * stride_u_d + l * stride_u_l, mask=m_t, other=0.0).to(ACC)
        gB_t = _row(b_gB, o_t, t)
        du_t = gB_t * _row(b_dt, o_t, t)
        if HAS_D:
            dy_t = _row(b_dy, o_t, t)
            du_t = du_t + dy_t * b_Dv
            b_dD += dy_t * u_t
        tl.store(p_du + o_g, du_t.to(p_du.dtype.element_ty), mask=m_t)
        ddt_t = _row(b_sA, o_t, t) * 0.6931471805599453 + gB_t * u_t   # ln 2 undoes the log2(e) in b_sA
        if SOFTPLUS:
            pre_t = tl.load(p_delta + base_dt + o_d * stride_dt_d + l * stride_dt_l, mask=m_t, other=0.0)
            pre_t = pre_t.to(ACC) + b_bias
            ddt_t = ddt_t * tl.where(pre_t > 20.0, 1.0, _sigmoid(pre_t))
        ddt_t = tl.where(m_t, ddt_t, 0.0)
        b_dbias += ddt_t
        tl.store(p_ddelta + o_g, ddt_t.to(p_ddelta.dtype.element_ty), mask=m_t)
        if HAS_Z:
            z_t = tl.load(p_z + base_z + o_d * stride_z_d + l * stride_z_l, mask=m_t, other=0.0).to(ACC)
            do_t = tl.load(p_dout + base_do + o_d * stride_do_d + l * stride_do_l, mask=m_t, other=0.0).to(ACC)
            y_t = _row(b_y, o_t, t) + b_Dv * u_t
            sig = _sigmoid(z_t)
            tl.store(p_dz + o_g, (do_t * y_t * sig * (1.0 + z_t * (1.0 - sig))).to(p_dz.dtype.element_ty),
                     mask=m_t)
    return b_dD, b_dbias


# Backward: with dy_t = dout_t silu(z_t), the adjoint g_t = dL/dh_t obeys g_t = C_t dy_t + a_{t+1} g_{t+1}
# (a_t = exp(Δ_t A)), and
#   dΔ_t = Σ_n g_t (A a_t h_{t-1} + B_t u_t),  dA = Σ_t g_t a_t h_{t-1} Δ_t,  dB_t = Σ_d g_t Δ_t u_t,
#   dC_t = Σ_d dy_t h_t,  du_t = Σ_n g_t Δ_t B_t + D dy_t,  dz_t = dout_t y_t silu'(z_t).
# Each thread owns one channel, as in the forward. Chunks run last to first; in each, for every state n, the
# thread recomputes the chunk's 16 states serially from the forward's checkpoint (a_t and a_t h_{t-1} kept in
# registers, never h_t - x_t, which cancels), then runs the adjoint serially backwards from the carry the
# chunk after it left. The recurrences never cross threads; dB_t and dC_t (sums over channels) are a
# reduce-scatter across the lanes per state and chunk into per-program partials that torch sums afterwards
# in a fixed order, as it does the dA, dD and dΔ-bias partials: deterministic, no atomics. Every chunk runs
# with length masks (see the chunk loop). Grid: (cdiv(dim, BLOCK_D), batch).
@triton.jit(do_not_specialize=["length"])
def _selective_scan_bwd_kernel(
    p_dout, p_u, p_delta, p_A, p_B, p_C, p_D, p_z, p_bias, p_ckpt,
    p_du, p_ddelta, p_dz, p_dA_part, p_dB_part, p_dC_part, p_dD_part, p_dbias_part, p_carry,
    stride_do_b, stride_do_d, stride_do_l,
    stride_u_b, stride_u_d, stride_u_l, stride_dt_b, stride_dt_d, stride_dt_l, stride_z_b, stride_z_d, stride_z_l,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_A_d, stride_A_n, stride_g_b, stride_g_d, stride_g_l,
    dim, dstate, length, dim_per_group,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    i_d = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    n_dblocks = tl.num_programs(0).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    o_t = tl.arange(0, CHUNK)
    m_d = o_d < dim
    i_g = (i_d * BLOCK_D) // dim_per_group
    b_Dv = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_D:
        b_Dv = tl.load(p_D + o_d, mask=m_d, other=0.0).to(ACC)
    b_bias = tl.zeros([BLOCK_D], dtype=ACC)
    if HAS_BIAS:
        b_bias = tl.load(p_bias + o_d, mask=m_d, other=0.0).to(ACC)
    o_nd = i_b * dstate * dim + o_d   # carry and dA scratch (batch, N, dim), written before it is read
    b_dD = tl.zeros([BLOCK_D], dtype=ACC)
    b_dbias = tl.zeros([BLOCK_D], dtype=ACC)
    n_chunks = tl.cdiv(length, CHUNK)
    base_u, base_dt, base_z, base_do = i_b * stride_u_b, i_b * stride_dt_b, i_b * stride_z_b, i_b * stride_do_b
    base_B, base_C = i_b * stride_B_b + i_g * stride_B_g, i_b * stride_C_b + i_g * stride_C_g
    base_g = i_b * stride_g_b
    o_part = (i_b * n_dblocks + i_d) * dstate * length   # dB/dC partials (batch, channel block, N, L)
    # A partial last chunk could run with length masks and the full ones without (0.911 -> 0.885 ms
    # estimated), but that second copy of the chunk body made Triton's coalescing pass 3.3x slower (258 s
    # instead of 78 s to compile on a 2-core CPU, the first backward's JIT on a GPU machine too): one masked
    # body serves every chunk.
    for i_k in range(0, n_chunks):
        b_dD, b_dbias = _bwd_chunk(
            p_dout, p_u, p_delta, p_A, p_B, p_C, p_z, p_ckpt, p_du, p_ddelta, p_dz, p_dA_part, p_dB_part,
            p_dC_part, p_carry, b_Dv, b_bias, b_dD, b_dbias, i_k, n_chunks, o_d, m_d, o_t, o_nd, o_part, i_b,
            base_u, base_dt, base_z, base_do, base_B, base_C, base_g,
            stride_do_d, stride_do_l, stride_u_d, stride_u_l, stride_dt_d, stride_dt_l, stride_z_d, stride_z_l,
            stride_B_n, stride_B_l, stride_C_n, stride_C_l, stride_A_d, stride_A_n, stride_g_d, stride_g_l,
            dim, dstate, length, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, BLOCK_D, CHUNK, ACC)
    o_bd = i_b * dim + o_d
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


def _bwd_block(dim: int, groups: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the backward: one channel per thread like the forward, so that dB/dC's sums over
    the block's channels stay inside one warp (no barrier); a block stays inside one B/C group."""
    return _inside_group(min(32 * BWD_NUM_WARPS, triton.next_power_of_2(dim)), dim, groups), BWD_NUM_WARPS


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None, groups: int = 1) -> dict:
    """The tiles, warps and grid each kernel launches with for (batch, dim, L, N), keyed by kernel name: the
    same on every arch today."""
    batch, dim, length, dstate = shape
    fwd_block, fwd_warps = _fwd_block(dim, groups)
    bwd_block, bwd_warps = _bwd_block(dim, groups)
    return {"N_PAD": max(2, triton.next_power_of_2(dstate)), "CHUNK": CHUNK,
            "_selective_scan_fwd_kernel": {"BLOCK_D": fwd_block, "num_warps": fwd_warps, "maxnreg": MAXNREG,
                                           "grid": (triton.cdiv(dim, fwd_block), batch)},
            "_selective_scan_bwd_kernel": {"BLOCK_D": bwd_block, "num_warps": bwd_warps, "maxnreg": MAXNREG,
                                           "grid": (triton.cdiv(dim, bwd_block), batch)}}


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


def _wide(BC: torch.Tensor) -> torch.Tensor:
    """B or C in float32 when it is half precision (same strides), else itself."""
    return BC.float() if BC.dtype in (torch.float16, torch.bfloat16) else BC


def forward(*, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
            save_states=True) -> ScanForward:
    """out in u's dtype on the GPU and in u's layout (contiguous along L, or along the channels when u is, as
    the model's transposed projections are), last_state (batch, dim, N), the chunk-start states when
    ``save_states``."""
    # Every thread reads B_t and C_t ([N] each) at every step: in float32 the forward skips converting 32 bf16
    # values per step and thread (3,340 -> 2,634 instructions per chunk at the benchmark shape, sm_90), for two
    # small casts ((batch, N, L) each; strides kept). The backward reads them once per state and chunk: as given.
    B, C = _wide(B), _wide(C)
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
    """Every gradient; du/ddelta/dz in their inputs' dtypes on the GPU, contiguous along the channels (the
    kernel writes them one step at a time, a coalesced store per step)."""
    batch, dim, length, dstate, groups, n_pad, strides, config = _common(u, delta, A, B, C, z)
    launch = config["_selective_scan_bwd_kernel"]
    acc_tl, acc_torch = _acc_dtype(u)
    device = u.device
    n_dblocks = launch["grid"][0]

    def channel_major(x):
        return torch.empty((batch, length, dim), dtype=_io_dtype(x, acc_torch), device=device).transpose(1, 2)

    du, ddelta = channel_major(u), channel_major(delta)
    dz = channel_major(z) if z is not None else None
    dA_part = torch.empty((batch, dstate, dim), dtype=acc_torch, device=device)
    carry = torch.empty((batch, dstate, dim), dtype=acc_torch, device=device)
    dB_part = torch.empty((batch, n_dblocks, dstate, length), dtype=acc_torch, device=device)
    dC_part = torch.empty_like(dB_part)
    dD_part = torch.empty((batch, dim), dtype=acc_torch, device=device) if D is not None else None
    dbias_part = torch.empty((batch, dim), dtype=acc_torch, device=device) if delta_bias is not None else None
    _selective_scan_bwd_kernel[launch["grid"]](
        p_dout=dout, p_u=u, p_delta=delta, p_A=A, p_B=B, p_C=C,
        p_D=D.contiguous() if D is not None else du, p_z=z if z is not None else u,
        p_bias=delta_bias.contiguous() if delta_bias is not None else du, p_ckpt=checkpoints,
        p_du=du, p_ddelta=ddelta, p_dz=dz if dz is not None else du, p_dA_part=dA_part,
        p_dB_part=dB_part, p_dC_part=dC_part,
        p_dD_part=dD_part if dD_part is not None else dA_part,
        p_dbias_part=dbias_part if dbias_part is not None else dA_part, p_carry=carry,
        stride_do_b=dout.stride(0), stride_do_d=dout.stride(1), stride_do_l=dout.stride(2), **strides,
        stride_g_b=du.stride(0), stride_g_d=du.stride(1), stride_g_l=du.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        BLOCK_D=launch["BLOCK_D"], CHUNK=CHUNK, ACC=acc_tl,
        num_warps=launch["num_warps"], maxnreg=launch["maxnreg"],
    )
    dB = _reduce_channel_blocks(dB_part, B, groups)
    dC = _reduce_channel_blocks(dC_part, C, groups)
    return ScanGrads(
        du=du, ddelta=ddelta, dA=dA_part.sum(0).t(), dB=dB, dC=dC,
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
