"""Triton kernels of the contrastive loss, "split" algorithm (SPEC 6.4): FlashAttention-2's shape, three
kernels, no (N, M) buffer, no atomics. Notation as in ``triton.py`` (the "fused" algorithm): s_ij = scale a_i . c_j,
A(i) the candidates in anchor i's sum, m_i, l_i its max and sum of exp(s_ij - m_i), P_ij = exp(s_ij - m_i) / l_i.

Why a second algorithm: the fused forward folds the anchor gradient into the forward pass, so each program
carries the scores [BLOCK_N, BLOCK_M], an O accumulator [BLOCK_N, BLOCK_D] and the candidate tile it multiplies,
and the H100 profile showed 255 registers with spills in both fused kernels (fused tiles: BLOCK_D = 256). Here
every program keeps one fp32 score tile and one [rows, BLOCK_D] accumulator at most, with smaller BLOCK_D:
  1. stats     (grid over anchor blocks): m_i, l_i, s_{i p_i} only. It is the fused forward kernel with
               WANT_WEIGHTED off (the O accumulator and its loads are constexpr-compiled out), run under this
               module's tiles.
  2. anchor    (grid over anchor blocks, defined here): O_i = sum_j P_ij c_j, so
               dL/da_i = scale w_i (O_i - c_{p_i}) (function.py applies w_i, scale and c_{p_i}).
  3. candidate (grid over candidate blocks): G_j = sum_i w_i (P_ij - [j = p_i]) a_i, so dL/dc_j = scale G_j.
               It is the fused backward kernel, under this module's tiles: it already has this shape. A
               candidate-major score tile (S^T = C A^T, as FlashAttention-2's dK/dV kernel, which would spare the
               register transpose of dS) was tried and dropped: it rounds s_ij differently from the stats kernel,
               and the confident-anchor test's candidate gradient then missed its bound (1.25e-5 > 1.02e-5).
Kernels 2 and 3 recompute P from the stored m_i and 1 / l_i. Both put the output's D chunks on the grid
(axis 2) and recompute the score tile (a K-loop over all of D) in every chunk's program, instead of one
program looping over the chunks: that trades (D / BLOCK_D) score recomputations for a [rows, BLOCK_D]
accumulator (64 x 128 fp32 = 64 registers a thread at 4 warps) and D / BLOCK_D times more programs, which
4096 x 4096 needs anyway to fill 132 SMs (64 row blocks alone would not). An in-program loop over the chunks
would do the same arithmetic with fewer programs. The sweep (benchmarks/sweeps/contrastive_sweep.py) measures
BLOCK_D = D (no recomputation) against smaller chunks.

The forward runs kernels 1 and 2 (kernel 2 only when the anchors want a gradient), so the autograd Function
and the chunked path's interface stay as they are; the backward runs kernel 3.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from retailsim.ops.contrastive_loss import triton as fused
from retailsim.ops.contrastive_loss.triton import (LOG2E, _allowed_tile, _dot, _precision, _score_tile, _split_plan,
                                                  _upcast)

KEEPS_INPUT_DTYPE = True  # bf16/fp16 operands go to tl.dot as they are; accumulation is fp32

# Tile shapes on CUDA, shared by the three kernels (BLOCK_N anchor rows, BLOCK_M candidate rows, BLOCK_K the
# score K-loop step, BLOCK_D the output chunk). Not yet timed on a GPU: chosen as the configs that compile for
# sm_90 without spills (Triton 3.9, registers read off the cubin by benchmarks/sweeps/contrastive_registers.py:
# bf16 stats/anchor/candidate kernels 118/186/226 registers, fp32 148/230/246; at 4 warps the candidate kernel
# spills). benchmarks/sweeps/contrastive_sweep.py times them against the alternatives on an H100. Under the
# interpreter, and with config_override, the fused module's entries apply (one override switches both).
CUDA_CONFIG = {
    "half": dict(BLOCK_N=64, BLOCK_M=64, BLOCK_K=64, BLOCK_D=256, num_warps=8, num_stages=3, splits=None),
    "float32": dict(BLOCK_N=64, BLOCK_M=64, BLOCK_K=32, BLOCK_D=128, num_warps=8, num_stages=2, splits=None),
    "float64": dict(BLOCK_N=16, BLOCK_M=16, BLOCK_K=16, BLOCK_D=64, num_warps=4, num_stages=1, splits=None),
}


@triton.jit(do_not_specialize=["N", "M", "blocks_per_split"])
def _contrastive_anchor_kernel(
    a_ptr, c_ptr, positive_ptr, anchor_group_ptr, candidate_group_ptr, candidate_label_ptr, positive_label_ptr,
    row_max_ptr, inv_row_sum_ptr, weighted_ptr,
    N, M, D, stride_a, stride_c, blocks_per_split, scale,
    HAS_LABEL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Softmax-weighted candidates by recomputation: O_i[d] = sum_{j in A(i)} P_ij c_j[d].

    Gradient: d loss_i / d s_ij = P_ij - [j = p_i] on A(i), and s_ij = scale a_i . c_j, so
    dL/da_i = scale w_i (sum_j P_ij c_j - c_{p_i}) = scale w_i (O_i - c_{p_i}); the launcher's caller subtracts
    c_{p_i} and applies scale w_i (w_i = upstream gradient times the reduction's weight, 0 if ignored).
    P_ij = exp(s_ij - m_i) / l_i from the stats kernel's m_i and 1 / l_i (0 for ignored anchors), so the
    partial sums of different candidate splits simply add. Scores are formed exactly as the stats kernel forms
    them (anchors x candidates, same K-loop), so P_{i p_i} is the forward's value.
    Grid: (cdiv(N, BLOCK_N), splits over candidate blocks, cdiv(D, BLOCK_D)); program (n, s, d) owns rows n of
    split s's partial O in columns d and loops over split s's candidate blocks. Registers: the score tile
    [BLOCK_N, BLOCK_M] and the accumulator [BLOCK_N, BLOCK_D], both fp32.
    """
    i_n, i_s, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc_dtype = weighted_ptr.dtype.element_ty
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_k = tl.arange(0, BLOCK_K)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D

    b_positive = tl.load(positive_ptr + o_n, mask=m_n, other=-1)
    b_anchor_group = tl.load(anchor_group_ptr + o_n, mask=m_n, other=0)
    b_positive_label = b_positive  # stand-in, not read without labels
    if HAS_LABEL:
        b_positive_label = tl.load(positive_label_ptr + o_n, mask=m_n, other=0)
    b_row_max = tl.load(row_max_ptr + o_n, mask=m_n, other=0.0)
    b_inv_row_sum = tl.load(inv_row_sum_ptr + o_n, mask=m_n, other=0.0)
    p_a_rows = a_ptr + o_n.to(tl.int64)[:, None] * stride_a
    b_weighted = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_dtype)

    lo = i_s * blocks_per_split * BLOCK_M
    hi = tl.minimum(lo + blocks_per_split * BLOCK_M, M)
    for start_m in range(lo, hi, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        p_c_rows = c_ptr + o_m.to(tl.int64)[:, None] * stride_c
        b_scores = _score_tile(tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_dtype), p_a_rows, p_c_rows, o_k, m_n, m_m, D,
                               BLOCK_K, PRECISION, UPCAST) * scale

        b_candidate_group = tl.load(candidate_group_ptr + o_m, mask=m_m, other=0)
        b_candidate_label = b_candidate_group  # stand-in, not read without labels
        if HAS_LABEL:
            b_candidate_label = tl.load(candidate_label_ptr + o_m, mask=m_m, other=0)
        b_allowed, _ = _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group, b_positive_label,
                                     b_candidate_label, HAS_LABEL)

        b_p = tl.where(b_allowed, tl.exp2((b_scores - b_row_max[:, None]) * LOG2E) * b_inv_row_sum[:, None], 0.0)
        b_c_out = tl.load(p_c_rows + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
        b_weighted += _dot(b_p.to(b_c_out.dtype), b_c_out, PRECISION, UPCAST)

    p_weighted = weighted_ptr + (i_s.to(tl.int64) * N + o_n)[:, None] * D + o_d[None, :]
    tl.store(p_weighted, b_weighted, mask=m_n[:, None] & m_d[None, :])


# --------------------------------------------------------------------------------------------- launchers


def _config(operand: torch.Tensor, dim: int) -> dict:
    return fused._config(operand, dim, CUDA_CONFIG)


def _id_pointers(index) -> dict:
    """Label pointers stand in for themselves when there are no labels (HAS_LABEL off: never read)."""
    has_label = index.candidate_label is not None
    return dict(
        positive_ptr=index.positive_index, anchor_group_ptr=index.anchor_group,
        candidate_group_ptr=index.candidate_group,
        candidate_label_ptr=index.candidate_label if has_label else index.candidate_group,
        positive_label_ptr=index.positive_label if has_label else index.anchor_group, HAS_LABEL=has_label)


def _launch_options(a_op: torch.Tensor, config: dict) -> dict:
    return dict(PRECISION=_precision(a_op), UPCAST=_upcast(a_op), BLOCK_N=config["BLOCK_N"],
                BLOCK_M=config["BLOCK_M"], BLOCK_K=config["BLOCK_K"], BLOCK_D=config["BLOCK_D"],
                num_warps=config["num_warps"], num_stages=config["num_stages"])


def _inverse_sum(row_sum: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    """1 / l_i, and 0 where l_i = 0 (ignored anchors: nothing allowed), so no inf reaches a kernel."""
    row_sum = row_sum.to(acc_dtype)
    return torch.where(row_sum > 0, 1.0 / row_sum, torch.zeros_like(row_sum)).contiguous()


def weighted_candidates(a_op, c_op, index, scale: float, row_max: torch.Tensor, row_sum: torch.Tensor,
                        config: dict | None = None) -> torch.Tensor:
    """(N, D): O_i = sum_j P_ij c_j in float32 (float64 for float64 operands), by the anchor kernel."""
    num_anchors, dim = a_op.shape
    num_candidates = c_op.shape[0]
    acc_dtype = torch.float64 if a_op.dtype == torch.float64 else torch.float32
    config = _config(a_op, dim) if config is None else config
    anchor_blocks = triton.cdiv(num_anchors, config["BLOCK_N"])
    d_chunks = triton.cdiv(dim, config["BLOCK_D"])
    splits, blocks_per_split = _split_plan(config, anchor_blocks * d_chunks, num_candidates, config["BLOCK_M"],
                                           a_op.device)
    weighted = torch.empty(splits, num_anchors, dim, device=a_op.device, dtype=acc_dtype)     # (S, N, D)
    _contrastive_anchor_kernel[(anchor_blocks, splits, d_chunks)](
        a_ptr=a_op, c_ptr=c_op, **_id_pointers(index),
        row_max_ptr=row_max.to(acc_dtype).contiguous(), inv_row_sum_ptr=_inverse_sum(row_sum, acc_dtype),
        weighted_ptr=weighted,
        N=num_anchors, M=num_candidates, D=dim, stride_a=a_op.stride(0), stride_c=c_op.stride(0),
        blocks_per_split=blocks_per_split, scale=scale, **_launch_options(a_op, config),
    )
    return weighted[0] if splits == 1 else weighted.sum(dim=0)


def forward(a_op, c_op, index, scale: float, want_anchor_grad: bool, unit_weight=None):
    """As ``triton.forward``: ``(row_max, row_sum, positive_score, O or None, None)``; ``unit_weight`` unused
    (the candidate gradient is always the backward's candidate kernel)."""
    config = _config(a_op, a_op.shape[1])
    row_max, row_sum, positive_score, _, _ = fused.forward(a_op, c_op, index, scale, want_anchor_grad=False,
                                                           config=config)
    weighted = None
    if want_anchor_grad and a_op.shape[0] > 0:
        weighted = weighted_candidates(a_op, c_op, index, scale, row_max, row_sum, config)
    elif want_anchor_grad:
        weighted = a_op.new_zeros(a_op.shape, dtype=row_sum.dtype)
    return row_max, row_sum, positive_score, weighted, None


def candidate_grad(a_op, c_op, index, scale: float, row_max: torch.Tensor, row_sum: torch.Tensor,
                   row_weight: torch.Tensor) -> torch.Tensor:
    """(M, D): G_j = sum_i w_i (P_ij - [j = p_i]) a_i by the fused module's candidate kernel, under this module's
    tiles (float32, float64 for float64 operands)."""
    return fused.candidate_grad(a_op, c_op, index, scale, row_max, row_sum, row_weight,
                                config=_config(a_op, a_op.shape[1]))
