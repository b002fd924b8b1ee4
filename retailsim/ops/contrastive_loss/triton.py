"""Triton kernels of the contrastive loss and their launchers (SPEC 6.4). No (N, M) buffer is ever written.

Notation: a_i (N, D) and c_j (M, D) are the raw inputs, r_i = max(||a_i||, eps) and q_j = max(||c_j||, eps)
their norms (1 without normalisation), s_ij = scale * (a_i . c_j) / (r_i q_j) with scale = 1/temperature,
A(i) = { j : j = p_i, or group_j != group_i and label_j != label_{p_i} } the candidates in anchor i's sum,
m_i = max_{j in A(i)} s_ij, l_i = sum_{j in A(i)} exp(s_ij - m_i), P_ij = exp(s_ij - m_i) / l_i on A(i), and
loss_i = (m_i - s_{i p_i}) + log l_i. The matrix products take the raw rows (bf16 stays bf16 on the tensor
cores) and the norms scale the fp32 score tile: no normalised copy of either input is written.

Five launches per forward + backward, four matrix products in all (the S recomputation included):
  norms     r_i and q_j, one pass over both inputs.
  forward   (anchor-major): m_i, l_i, s_{i p_i} and O_i = sum_j P_ij c_j / q_j, the softmax-weighted
            candidates. With O the anchor gradient needs no second pass over the candidates.
  loss      one program: the splits' statistics merged, each row's loss (NaN for a positive index outside
            [-1, M): the check costs no host sync), the sum or mean, and the number of valid anchors.
  candidate (candidate-major): G_j = sum_i w_i (P_ij - [j = p_i]) a_i / r_i. Each program owns its candidate
            rows and loops over anchors: no atomics, deterministic.
  gradients one program per row: dL/da_i from O_i, c_{p_i} and w_i, dL/dc_j = scale G_j summed over the
            splits, each through the normalisation's backward, written in the input's dtype.
w_i, the upstream gradient of loss_i (grad_output per row, or the scalar one, over n_valid for the mean), is
read inside the kernels. The forward and candidate grids may split their loop range over a second axis
(partials merged in a fixed order by the loss and gradient kernels) to fill the GPU when N or M alone gives
too few programs, and over a third axis of output-D chunks (the score block is then recomputed per chunk) so
that a (BLOCK, BLOCK_D) fp32 accumulator fits in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from retailsim.ops.contrastive_loss.contract import FocalTerms, Saved, empty
from retailsim.ops.focal_loss.triton import _focal_terms



# Kernels may read module globals only when they are constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
# Finite running-max start: a block with no allowed candidate then gives exp2(-inf) = 0, not NaN.
M_INIT = tl.constexpr(-1.0e30)
NORM_EPS = 1e-12  # as F.normalize: x / max(||x||, eps)
REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 (fp64) accumulation. UPCAST: the Triton interpreter multiplies bf16 blocks wrongly
    (it treats their bits as integers, Triton 3.9), so there the operands are widened first, which gives the
    same exact bf16 x bf16 products the tensor cores form."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _score_tile(p_a_rows, p_c_rows, o_k, m_n, m_m, b_row_scale, b_inv_c, bias_ptr, o_m, D, ACC: tl.constexpr,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """s = (A_tile C_tile^T) * (scale / r_i) * (1 / q_j) (+ b_j with HAS_BIAS) over D in chunks of BLOCK_K (rows
    of A at p_a_rows, of C at p_c_rows, candidates o_m; b_row_scale = scale / r_i, b_inv_c = 1 / q_j).

    Every kernel computes its scores through this one function, so a backward's s_ij are the forward's floats
    bit for bit (P_ip = exp(s_ip - m_i) / l_i stays exactly 1 / l_i for a confident anchor)."""
    b_scores = tl.zeros([BLOCK_N, BLOCK_M], dtype=ACC)
    for start_k in range(0, D, BLOCK_K):
        o_kk = start_k + o_k
        m_k = o_kk < D
        b_a = tl.load(p_a_rows + o_kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        b_c = tl.load(p_c_rows + o_kk[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_scores += _dot(b_a, tl.trans(b_c), PRECISION, UPCAST)
    b_scores = b_scores * b_row_scale[:, None] * b_inv_c[None, :]
    if HAS_BIAS:
        b_scores += tl.load(bias_ptr + o_m, mask=m_m, other=0.0).to(ACC)[None, :]
    return b_scores


@triton.jit
def _inverse_norms(norm_ptr, o_r, m_r, NORMALIZE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """1 / max(||x||, eps) of rows o_r (1 without normalisation)."""
    if NORMALIZE:
        return 1.0 / tl.load(norm_ptr + o_r, mask=m_r, other=1.0).to(ACC)
    return tl.full([BLOCK], 1.0, dtype=ACC)


@triton.jit
def _row_weights(grad_ptr, grad_stride, n_valid_ptr, coef_ptr, b_positive, o_r, m_r, M, ACC: tl.constexpr,
                 MEAN: tl.constexpr, FOCAL: tl.constexpr):
    """w_i: the upstream gradient of loss_i (per row, or the scalar one read with stride 0), over the number of
    valid anchors for the mean, times d focal_i / d ce_i (coef_ptr, the loss kernel's) with FOCAL; 0 for an
    anchor without a positive."""
    b_grad = tl.load(grad_ptr + o_r * grad_stride, mask=m_r, other=0.0).to(ACC)
    if MEAN:
        b_grad = b_grad / tl.maximum(tl.load(n_valid_ptr).to(ACC), 1.0)
    if FOCAL:
        b_grad = b_grad * tl.load(coef_ptr + o_r, mask=m_r, other=0.0).to(ACC)
    return tl.where((b_positive >= 0) & (b_positive < M), b_grad, 0.0)


@triton.jit
def _map_positive(b_index, ignore_index):
    """The positive index of a row from the caller's index: ignore_index -> -1 (no positive, the row does not
    count), a literal -1 that is not ignore_index -> -2 (out of range: the row's loss is NaN), else itself.
    The contrastive loss passes ignore_index = -1, linear_focal_loss its own (-100 by default)."""
    b_index = b_index.to(tl.int64)
    return tl.where(b_index == ignore_index, -1, tl.where(b_index == -1, -2, b_index))


@triton.jit
def _safe_positive(b_positive, M):
    """The positive index where it is one, else 0: an address any anchor may read (its value then unused)."""
    return tl.where((b_positive >= 0) & (b_positive < M), b_positive, 0)


@triton.jit
def _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group, b_positive_label, b_candidate_label,
                  HAS_GROUP: tl.constexpr, HAS_LABEL: tl.constexpr):
    """(allowed, is_positive) [BLOCK_N, BLOCK_M] of anchors (positive index, group, positive's label: [BLOCK_N])
    against candidates o_m (group, label: [BLOCK_M]): j is in A(i) when it is i's positive, or lies in another
    group and (with labels) holds another product than the positive; never past M or for an anchor without a
    positive (< 0). Every kernel builds A(i) here; without labels the two label arguments are not read, without
    groups (linear_focal_loss: a softmax over every row of the weight) neither are the group ones."""
    b_is_positive = o_m[None, :] == b_positive[:, None]
    b_allowed = m_m[None, :] & (b_positive >= 0)[:, None]
    if HAS_GROUP:
        b_keep = b_candidate_group[None, :] != b_anchor_group[:, None]
        if HAS_LABEL:
            b_keep = b_keep & (b_candidate_label[None, :] != b_positive_label[:, None])
        b_allowed = b_allowed & (b_keep | b_is_positive)
    return b_allowed, b_is_positive


@triton.jit(do_not_specialize=["N", "M"])
def _contrastive_norm_kernel(a_ptr, c_ptr, norm_ptr, N, M, D, stride_a, stride_c, eps,
                             BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """max(||x||, eps) of BLOCK_R rows of the stacked [anchors; candidates] (rows past N read candidates).
    Grid: (cdiv(N + M, BLOCK_R),)."""
    acc_dtype = norm_ptr.dtype.element_ty
    o_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    m_a = o_r < N
    m_c = (o_r >= N) & (o_r < N + M)
    p_a_rows = a_ptr + tl.where(m_a, o_r, 0).to(tl.int64)[:, None] * stride_a
    p_c_rows = c_ptr + tl.where(m_c, o_r - N, 0).to(tl.int64)[:, None] * stride_c
    o_k = tl.arange(0, BLOCK_K)
    b_squares = tl.zeros([BLOCK_R, BLOCK_K], dtype=acc_dtype)
    for start_k in range(0, D, BLOCK_K):
        o_kk = start_k + o_k
        m_k = (o_kk < D)[None, :]
        b_x = tl.load(p_a_rows + o_kk[None, :], mask=m_a[:, None] & m_k, other=0.0).to(acc_dtype) \
            + tl.load(p_c_rows + o_kk[None, :], mask=m_c[:, None] & m_k, other=0.0).to(acc_dtype)
        b_squares += b_x * b_x
    tl.store(norm_ptr + o_r, tl.maximum(tl.sqrt(tl.sum(b_squares, axis=1)), eps), mask=o_r < N + M)


@triton.jit(do_not_specialize=["N", "M", "blocks_per_split", "ignore_index"])
def _contrastive_fwd_kernel(
    a_ptr, c_ptr, norm_ptr, positive_ptr, anchor_group_ptr, candidate_group_ptr, candidate_label_ptr, bias_ptr,
    stats_ptr, weighted_ptr,
    N, M, D, stride_a, stride_c, blocks_per_split, scale, ignore_index,
    NORMALIZE: tl.constexpr, HAS_GROUP: tl.constexpr, HAS_LABEL: tl.constexpr, HAS_BIAS: tl.constexpr,
    WANT_WEIGHTED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Online log-sum-exp over candidate blocks for one block of anchors.

    Computes, for anchors i of block program_id(0) and candidates j of split program_id(1):
      m_i, l_i  running max of s_ij and sum of exp(s_ij - m_i) over j in A(i)  (flash-attention recurrence)
      O_i       running sum of exp(s_ij - m_i) c_j / q_j [d-chunk program_id(2)], rescaled as m_i grows
      s_{i p_i} picked out of the score block where j = p_i (exactly one split sees it)
    and writes, per split, m (M_INIT, l = 0 when the split holds nothing of A(i)), l and the positive score
    into stats (3, splits, N), and O / l into weighted (splits, N, D). m stays in natural units (not log2) so
    that loss_i = (m_i - s_ip) + log l_i is exact to rounding of log l_i: for a confident anchor m_i and s_ip
    are the same float, and no cancellation of two large LSE terms happens.
    Grid: (cdiv(N, BLOCK_N), splits, cdiv(D, BLOCK_D) if WANT_WEIGHTED else 1).
    """
    i_n, i_s, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_splits = tl.num_programs(1)
    acc_dtype = stats_ptr.dtype.element_ty
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    o_k = tl.arange(0, BLOCK_K)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D

    b_positive = _map_positive(tl.load(positive_ptr + o_n, mask=m_n, other=ignore_index), ignore_index)
    b_anchor_group = b_positive  # stand-in, not read without groups
    if HAS_GROUP:
        b_anchor_group = tl.load(anchor_group_ptr + o_n, mask=m_n, other=0)
    b_positive_label = b_positive  # stand-in, not read without labels
    if HAS_LABEL:
        b_positive_label = tl.load(candidate_label_ptr + _safe_positive(b_positive, M), mask=m_n, other=0)
    b_row_scale = scale * _inverse_norms(norm_ptr, o_n, m_n, NORMALIZE, acc_dtype, BLOCK_N)
    p_a_rows = a_ptr + o_n.to(tl.int64)[:, None] * stride_a

    b_max = tl.full([BLOCK_N], M_INIT, dtype=acc_dtype)
    b_sum = tl.zeros([BLOCK_N], dtype=acc_dtype)
    b_positive_score = tl.zeros([BLOCK_N], dtype=acc_dtype)
    b_weighted = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_dtype)

    lo = i_s * blocks_per_split * BLOCK_M
    hi = tl.minimum(lo + blocks_per_split * BLOCK_M, M)
    for start_m in range(lo, hi, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        p_c_rows = c_ptr + o_m.to(tl.int64)[:, None] * stride_c
        b_inv_c = _inverse_norms(norm_ptr + N, o_m, m_m, NORMALIZE, acc_dtype, BLOCK_M)
        b_scores = _score_tile(p_a_rows, p_c_rows, o_k, m_n, m_m, b_row_scale, b_inv_c, bias_ptr, o_m, D,
                               acc_dtype, HAS_BIAS, BLOCK_N, BLOCK_M, BLOCK_K, PRECISION, UPCAST)

        b_candidate_group = o_m  # stand-in, not read without groups
        if HAS_GROUP:
            b_candidate_group = tl.load(candidate_group_ptr + o_m, mask=m_m, other=0)
        b_candidate_label = b_candidate_group  # stand-in, not read without labels
        if HAS_LABEL:
            b_candidate_label = tl.load(candidate_label_ptr + o_m, mask=m_m, other=0)
        b_allowed, b_is_positive = _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group,
                                                 b_positive_label, b_candidate_label, HAS_GROUP, HAS_LABEL)

        b_masked = tl.where(b_allowed, b_scores, float("-inf"))
        b_max_new = tl.maximum(b_max, tl.max(b_masked, axis=1))
        b_rescale = tl.exp2((b_max - b_max_new) * LOG2E)
        b_p = tl.exp2((b_masked - b_max_new[:, None]) * LOG2E)
        b_sum = b_sum * b_rescale + tl.sum(b_p, axis=1)
        b_positive_score += tl.sum(tl.where(b_is_positive & m_m[None, :], b_scores, 0.0), axis=1)
        if WANT_WEIGHTED:
            b_c_out = tl.load(p_c_rows + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
            b_p_unit = b_p * b_inv_c[None, :]   # P against the unit candidates c_j / q_j
            b_weighted = b_weighted * b_rescale[:, None] + _dot(b_p_unit.to(b_c_out.dtype), b_c_out, PRECISION,
                                                                UPCAST)
        b_max = b_max_new

    o_part = i_s.to(tl.int64) * N + o_n
    if i_d == 0:  # every D-chunk computed the same m and l; the first one writes them
        tl.store(stats_ptr + o_part, b_max, mask=m_n)
        tl.store(stats_ptr + n_splits * N + o_part, b_sum, mask=m_n)
        tl.store(stats_ptr + 2 * n_splits * N + o_part, b_positive_score, mask=m_n)
    if WANT_WEIGHTED:
        b_weighted = b_weighted / tl.where(b_sum > 0, b_sum, 1.0)[:, None]
        p_weighted = weighted_ptr + o_part[:, None] * D + o_d[None, :]
        tl.store(p_weighted, b_weighted, mask=m_n[:, None] & m_d[None, :])


@triton.jit(do_not_specialize=["N", "M", "n_splits", "ignore_index"])
def _contrastive_loss_kernel(
    stats_ptr, positive_ptr, alpha_ptr, row_stats_ptr, split_weight_ptr, loss_ptr, n_valid_ptr, N, M, n_splits,
    gamma, ignore_index,
    REDUCTION: tl.constexpr, WANT_SPLIT_WEIGHT: tl.constexpr, FOCAL: tl.constexpr, HAS_ALPHA: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One program, rows in order (deterministic): the splits' (m, l, s_ip) merged into each row's m and 1 / l
    (row_stats (2, N)), each split's weight l_s exp(m_s - m) / l in the row's O (split_weight (splits, N)),
    loss_i = (m_i - s_ip) + log l_i (0 for an ignored anchor, NaN for a positive index outside [-1, M)), and
    the loss: per row (REDUCTION 2), their sum (1) or their mean over the valid anchors (0, 0 when none);
    n_valid counts the anchors with a positive (out-of-range ones included, so that their NaN reaches the
    mean). FOCAL (linear_focal_loss): ce_i = (m_i - s_ip) + log l_i becomes alpha_{p_i} q_i^gamma ce_i with
    q_i = 1 - exp(-ce_i), and its derivative in ce_i goes to row_stats' third row for the gradient kernels'
    row weights. Grid: (1,)."""
    acc_dtype = row_stats_ptr.dtype.element_ty
    o_r = tl.arange(0, BLOCK_R)
    b_total = tl.zeros([BLOCK_R], dtype=acc_dtype)
    b_count = tl.zeros([BLOCK_R], dtype=tl.int32)
    for start in range(0, N, BLOCK_R):
        o_n = start + o_r
        m_n = o_n < N
        b_positive = _map_positive(tl.load(positive_ptr + o_n, mask=m_n, other=ignore_index), ignore_index)
        b_valid = (b_positive >= 0) & (b_positive < M)
        b_bad = m_n & ((b_positive < -1) | (b_positive >= M))
        b_max = tl.full([BLOCK_R], M_INIT, dtype=acc_dtype)
        b_sum = tl.zeros([BLOCK_R], dtype=acc_dtype)
        b_positive_score = tl.zeros([BLOCK_R], dtype=acc_dtype)
        for i_s in range(0, n_splits):   # online merge; a split without any of A(i) has m = M_INIT, l = 0
            b_split_max = tl.load(stats_ptr + i_s * N + o_n, mask=m_n, other=M_INIT)
            b_max_new = tl.maximum(b_max, b_split_max)
            b_sum = b_sum * tl.exp(b_max - b_max_new) \
                + tl.load(stats_ptr + (n_splits + i_s) * N + o_n, mask=m_n, other=0.0) * tl.exp(b_split_max - b_max_new)
            b_positive_score += tl.load(stats_ptr + (2 * n_splits + i_s) * N + o_n, mask=m_n, other=0.0)
            b_max = b_max_new
        b_sum = tl.where(b_valid, b_sum, 1.0)
        b_max = tl.where(b_valid, b_max, 0.0)
        b_inv_sum = 1.0 / b_sum
        tl.store(row_stats_ptr + o_n, b_max, mask=m_n)
        tl.store(row_stats_ptr + N + o_n, b_inv_sum, mask=m_n)
        if WANT_SPLIT_WEIGHT:
            for i_s in range(0, n_splits):
                b_split_max = tl.load(stats_ptr + i_s * N + o_n, mask=m_n, other=M_INIT)
                b_split_sum = tl.load(stats_ptr + (n_splits + i_s) * N + o_n, mask=m_n, other=0.0)
                tl.store(split_weight_ptr + i_s * N + o_n,
                         tl.where(b_valid, b_split_sum * tl.exp(b_split_max - b_max) * b_inv_sum, 0.0), mask=m_n)
        b_loss = tl.where(b_valid, (b_max - b_positive_score) + tl.log(b_sum), 0.0)
        if FOCAL:
            b_alpha = 1.0
            if HAS_ALPHA:
                b_alpha = tl.load(alpha_ptr + _safe_positive(b_positive, M), mask=m_n, other=0.0).to(acc_dtype)
            b_ce = tl.maximum(b_loss, 0.0, propagate_nan=tl.PropagateNan.ALL)
            b_focal, b_coef, _ = _focal_terms(b_ce, gamma, b_alpha)
            b_loss = tl.where(b_valid, b_focal, 0.0)
            tl.store(row_stats_ptr + 2 * N + o_n, tl.where(b_valid, b_coef, 0.0), mask=m_n)
        b_loss = tl.where(b_bad, float("nan"), b_loss)
        if REDUCTION == 2:
            tl.store(loss_ptr + o_n, b_loss.to(loss_ptr.dtype.element_ty), mask=m_n)
        else:
            b_total += b_loss
            b_count += (b_valid | b_bad).to(tl.int32)
    n_valid = tl.sum(b_count, axis=0)
    if REDUCTION != 2:
        total = tl.sum(b_total, axis=0)
        if REDUCTION == 0:
            total = total / tl.maximum(n_valid, 1).to(acc_dtype)
        tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))
    tl.store(n_valid_ptr, n_valid.to(acc_dtype))


@triton.jit(do_not_specialize=["N", "M", "blocks_per_split", "ignore_index"])
def _contrastive_bwd_candidate_kernel(
    a_ptr, c_ptr, norm_ptr, positive_ptr, anchor_group_ptr, candidate_group_ptr, candidate_label_ptr, bias_ptr,
    row_stats_ptr, grad_loss_ptr, grad_stride, n_valid_ptr, grad_ptr, bias_grad_ptr,
    N, M, D, stride_a, stride_c, blocks_per_split, scale, ignore_index,
    NORMALIZE: tl.constexpr, HAS_GROUP: tl.constexpr, HAS_LABEL: tl.constexpr, HAS_BIAS: tl.constexpr,
    WANT_BIAS_GRAD: tl.constexpr, FOCAL: tl.constexpr, FINAL: tl.constexpr, MEAN: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Candidate gradient by recomputation: G_j = sum_i dS_ij a_i / r_i with dS_ij = w_i (P_ij - [j = p_i]).

    Derivation: L = sum_i w_i loss_i (w_i = upstream gradient times the reduction's weight, 0 for ignored
    anchors); d loss_i / d s_ij = P_ij - [j = p_i] on A(i) and 0 elsewhere; s_ij = scale (a_i / r_i).(c_j / q_j),
    so dL/d(c_j / q_j) = scale * G_j (the gradient kernel applies scale and the normalisation's backward).
    P_ij = exp(s_ij - m_i) / l_i comes from the loss kernel's merged m_i and 1 / l_i, so one pass suffices.
    With a bias (linear_focal_loss, never normalised) its gradient sum_i dS_ij comes with G. FINAL (one split,
    no normalisation): the program writes scale G_j in the output dtype, the candidate gradient itself, and the
    gradient kernel has nothing left to do for candidates.
    Grid: (cdiv(M, BLOCK_M), splits over anchor blocks, cdiv(D, BLOCK_D)); each program writes its own rows
    of its split's partial G, never another's.
    """
    i_m, i_s, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc_dtype = row_stats_ptr.dtype.element_ty
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    o_k = tl.arange(0, BLOCK_K)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D

    b_candidate_group = o_m  # stand-in, not read without groups
    if HAS_GROUP:
        b_candidate_group = tl.load(candidate_group_ptr + o_m, mask=m_m, other=0)
    b_candidate_label = b_candidate_group  # stand-in, not read without labels
    if HAS_LABEL:
        b_candidate_label = tl.load(candidate_label_ptr + o_m, mask=m_m, other=0)
    b_inv_c = _inverse_norms(norm_ptr + N, o_m, m_m, NORMALIZE, acc_dtype, BLOCK_M)
    p_c_rows = c_ptr + o_m.to(tl.int64)[:, None] * stride_c
    b_grad = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_dtype)
    b_bias_grad = tl.zeros([BLOCK_M], dtype=acc_dtype)

    lo = i_s * blocks_per_split * BLOCK_N
    hi = tl.minimum(lo + blocks_per_split * BLOCK_N, N)
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        p_a_rows = a_ptr + o_n.to(tl.int64)[:, None] * stride_a
        b_positive = _map_positive(tl.load(positive_ptr + o_n, mask=m_n, other=ignore_index), ignore_index)
        b_anchor_group = b_positive  # stand-in, not read without groups
        if HAS_GROUP:
            b_anchor_group = tl.load(anchor_group_ptr + o_n, mask=m_n, other=0)
        b_row_max = tl.load(row_stats_ptr + o_n, mask=m_n, other=0.0)
        b_inv_row_sum = tl.load(row_stats_ptr + N + o_n, mask=m_n, other=0.0)
        b_row_weight = _row_weights(grad_loss_ptr, grad_stride, n_valid_ptr, row_stats_ptr + 2 * N, b_positive,
                                    o_n, m_n, M, acc_dtype, MEAN, FOCAL)
        b_inv_a = _inverse_norms(norm_ptr, o_n, m_n, NORMALIZE, acc_dtype, BLOCK_N)

        b_scores = _score_tile(p_a_rows, p_c_rows, o_k, m_n, m_m, scale * b_inv_a, b_inv_c, bias_ptr, o_m, D,
                               acc_dtype, HAS_BIAS, BLOCK_N, BLOCK_M, BLOCK_K, PRECISION, UPCAST)

        b_positive_label = b_positive  # stand-in, not read without labels
        if HAS_LABEL:
            b_positive_label = tl.load(candidate_label_ptr + _safe_positive(b_positive, M), mask=m_n, other=0)
        b_allowed, b_is_positive = _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group,
                                                 b_positive_label, b_candidate_label, HAS_GROUP, HAS_LABEL)

        # Masked before the exponent: a disallowed candidate may score far above the row's max (exp2 overflows
        # to inf, and inf * 0 on a padding row is NaN); exp2(-inf) = 0 keeps every lane finite.
        b_p = tl.exp2(tl.where(b_allowed, b_scores - b_row_max[:, None], float("-inf")) * LOG2E) * b_inv_row_sum[:, None]
        b_d_scores = (b_row_weight * b_inv_a)[:, None] * (b_p - tl.where(b_is_positive, 1.0, 0.0))
        if WANT_BIAS_GRAD:   # 1 / r_i is 1 here: a bias comes only without normalisation
            b_bias_grad += tl.sum(b_d_scores, axis=0)
        b_a_out = tl.load(p_a_rows + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_grad += _dot(tl.trans(b_d_scores.to(b_a_out.dtype)), b_a_out, PRECISION, UPCAST)

    if FINAL:
        b_grad = scale * b_grad
    p_grad = grad_ptr + (i_s.to(tl.int64) * M + o_m)[:, None] * D + o_d[None, :]
    tl.store(p_grad, b_grad.to(grad_ptr.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])
    if WANT_BIAS_GRAD:
        if i_d == 0:
            tl.store(bias_grad_ptr + i_s.to(tl.int64) * M + o_m, b_bias_grad.to(bias_grad_ptr.dtype.element_ty),
                     mask=m_m)


@triton.jit(do_not_specialize=["N", "M", "splits_a", "splits_c", "anchor_rows", "ignore_index"])
def _contrastive_grad_kernel(
    a_ptr, c_ptr, norm_ptr, positive_ptr, grad_loss_ptr, grad_stride, n_valid_ptr, row_stats_ptr, weighted_ptr,
    split_weight_ptr, candidate_part_ptr, bias_part_ptr, grad_a_ptr, grad_c_ptr, grad_bias_ptr,
    N, M, D, stride_a, stride_c, splits_a, splits_c, scale, anchor_rows, eps, ignore_index,
    NORMALIZE: tl.constexpr, MEAN: tl.constexpr, FOCAL: tl.constexpr, WANT_BIAS_GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One row's gradient, in the input's dtype. Rows below anchor_rows (N, or 0 when the anchors need none)
    are anchors: dL/du_i = scale w_i (O_i - c_{p_i} / q_{p_i}), O_i merged over the forward's splits with the
    loss kernel's weights; the others candidates: dL/dv_j = scale sum_s G_j^(s). Either goes through the
    normalisation's backward, d/dx of u = x / max(||x||, eps): (g - u (u . g)) / ||x||, g / eps below eps
    (g unchanged without normalisation); a candidate row also sums its splits' bias gradient with
    WANT_BIAS_GRAD. Grid: (anchor_rows + M or anchor_rows,)."""
    acc_dtype = n_valid_ptr.dtype.element_ty
    i_r = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    if i_r < anchor_rows:
        b_positive = _map_positive(tl.load(positive_ptr + i_r), ignore_index)
        b_safe = _safe_positive(b_positive, M)
        b_weight = _row_weights(grad_loss_ptr, grad_stride, n_valid_ptr, row_stats_ptr + 2 * N, b_positive, i_r,
                                i_r < anchor_rows, M, acc_dtype, MEAN, FOCAL)
        b_weighted = tl.zeros([BLOCK_D], dtype=acc_dtype)
        for i_s in range(0, splits_a):
            b_weighted += tl.load(split_weight_ptr + i_s * N + i_r) \
                * tl.load(weighted_ptr + (i_s * N + i_r) * D + o_d, mask=m_d, other=0.0)
        b_inv_positive = 1.0
        if NORMALIZE:
            b_inv_positive = 1.0 / tl.load(norm_ptr + N + b_safe).to(acc_dtype)
        b_positive_row = tl.load(c_ptr + b_safe * stride_c + o_d, mask=m_d, other=0.0).to(acc_dtype)
        b_g = (scale * b_weight) * (b_weighted - b_positive_row * b_inv_positive)
        p_x = a_ptr + i_r * stride_a
        i_norm = i_r
        p_out = grad_a_ptr + i_r * D
    else:
        i_c = i_r - anchor_rows
        b_g = tl.zeros([BLOCK_D], dtype=acc_dtype)
        for i_s in range(0, splits_c):
            b_g += tl.load(candidate_part_ptr + (i_s * M + i_c) * D + o_d, mask=m_d, other=0.0)
        b_g = scale * b_g
        if WANT_BIAS_GRAD:
            b_bias = tl.load(bias_part_ptr + i_c).to(acc_dtype)
            for i_s in range(1, splits_c):
                b_bias += tl.load(bias_part_ptr + i_s * M + i_c).to(acc_dtype)
            tl.store(grad_bias_ptr + i_c, b_bias.to(grad_bias_ptr.dtype.element_ty))
        p_x = c_ptr + i_c * stride_c
        i_norm = N + i_c
        p_out = grad_c_ptr + i_c * D
    if NORMALIZE:
        norm = tl.load(norm_ptr + i_norm).to(acc_dtype)
        b_unit = tl.load(p_x + o_d, mask=m_d, other=0.0).to(acc_dtype) / norm
        radial = tl.where(norm > eps, tl.sum(b_unit * b_g, axis=0), 0.0)
        b_g = (b_g - b_unit * radial) / norm
    tl.store(p_out + o_d, b_g.to(p_out.dtype.element_ty), mask=m_d)


# --------------------------------------------------------------------------------------------- launchers

# Tile shapes by operand kind. Under the interpreter (CPU tests) small tiles keep numpy fast and exercise the
# masks; tests may replace this dict's shared entries through ``config_override``. The row kernels' own
# entries are keyed by kernel name.
_INTERPRET_CONFIG = dict(BLOCK_N=16, BLOCK_M=32, BLOCK_K=16, BLOCK_D=32, num_warps=4, num_stages=1, splits=None,
                         _contrastive_norm_kernel=dict(BLOCK_R=4, BLOCK_K=16, num_warps=4),
                         _contrastive_loss_kernel=dict(BLOCK_R=16, num_warps=4))
_ROW_KERNELS = dict(_contrastive_norm_kernel=dict(BLOCK_R=8, BLOCK_K=128, num_warps=4),
                    _contrastive_loss_kernel=dict(BLOCK_R=1024, num_warps=4))
_CUDA_CONFIG = {
    # bf16/fp16: the whole of D = 512 in one output chunk, so that each score tile is computed once (it was
    # computed once per 256-wide chunk of D: 1.5x the products), the (64, 512) fp32 accumulator spread over 8
    # warps (128 registers a thread), and 32 candidates per score tile so that nothing spills (238 / 231
    # registers at 4096 x 4096 x 512, sm_90; 64 spilled). Chosen from the offline report (docs/experiments.md);
    # the H100 sweep of 2026-11-27 (64 x 64 tiles, 4 warps, D in chunks of 256) timed the kernels before the
    # norms moved into them.
    "half": dict(BLOCK_N=64, BLOCK_M=32, BLOCK_K=64, BLOCK_D=512, num_warps=8, num_stages=2, splits=None),
    "float32": dict(BLOCK_N=64, BLOCK_M=64, BLOCK_K=32, BLOCK_D=128, num_warps=4, num_stages=2, splits=None),
    "float64": dict(BLOCK_N=16, BLOCK_M=16, BLOCK_K=16, BLOCK_D=64, num_warps=4, num_stages=1, splits=None),
}
_override: dict = {}


class config_override:
    """Context manager replacing tile-shape entries (tests and tuning): ``with config_override(splits=3):``."""

    def __init__(self, **entries):
        self.entries = entries

    def __enter__(self):
        self.previous = dict(_override)
        _override.update(self.entries)

    def __exit__(self, *exc):
        _override.clear()
        _override.update(self.previous)


def _grad_warps(block_d: int) -> int:
    """Warps of the one-row gradient kernel: about four values of the row per thread (eight spilled a register
    pair in the focal variant at D = 512, sm_90)."""
    return max(1, min(16, block_d // 128))


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None) -> dict:
    """The tile shapes and warps for (N, M, D) operands of ``dtype``: ``arch`` None means the interpreter
    (CPU tensors), any CUDA arch the CUDA table (one for every arch today), with ``config_override`` on top;
    the norm, loss and gradient kernels under their own names."""
    dim = shape[2]
    if arch is None:
        config = {k: dict(v) if isinstance(v, dict) else v for k, v in _INTERPRET_CONFIG.items()}
    else:
        kind = "float64" if dtype == torch.float64 else ("float32" if dtype == torch.float32 else "half")
        config = {**_CUDA_CONFIG[kind], **{k: dict(v) for k, v in _ROW_KERNELS.items()}}
    config.update(_override)
    # A chunk of D wider than D itself only pads: shrink it to the power of two covering D (>= 16 for tl.dot).
    config["BLOCK_D"] = min(config["BLOCK_D"], max(16, triton.next_power_of_2(dim)))
    config["BLOCK_K"] = min(config["BLOCK_K"], max(16, triton.next_power_of_2(dim)))
    norm = config["_contrastive_norm_kernel"]
    norm["BLOCK_K"] = min(norm["BLOCK_K"], triton.next_power_of_2(max(dim, 1)))
    whole_row = triton.next_power_of_2(max(dim, 1))
    config["_contrastive_grad_kernel"] = dict(BLOCK_D=whole_row, num_warps=_grad_warps(whole_row))
    return config


def _precision(operand: torch.Tensor) -> str:
    """fp32 on CUDA follows PyTorch's switch: plain TF32 when the user allowed it for matmuls, else TF32x3
    (three TF32 products per fp32 product: fp32-level error, measured equal to IEEE on an H100 at
    4096 x 4096 x 512, and 2.5x faster than IEEE's FMA loop). Elsewhere (interpreter) IEEE."""
    if operand.dtype == torch.float32 and operand.is_cuda:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
    return "ieee"


def _upcast(operand: torch.Tensor) -> bool:
    return operand.device.type != "cuda" and operand.dtype == torch.bfloat16


def _splits(config: dict, programs: int, loop_blocks: int, device: torch.device) -> int:
    """How many ways to split the loop so that programs x splits roughly fills the GPU once."""
    if config["splits"] is not None:
        splits = config["splits"]
    elif device.type == "cuda":
        sm_count = torch.cuda.get_device_properties(device).multi_processor_count
        splits = max(1, round(sm_count / programs))
    else:
        splits = 1
    return max(1, min(splits, loop_blocks))


def _split_plan(config, programs, loop_length, block, device):
    loop_blocks = triton.cdiv(loop_length, block)
    splits = _splits(config, programs, loop_blocks, device)
    blocks_per_split = triton.cdiv(loop_blocks, splits)
    return triton.cdiv(loop_blocks, blocks_per_split), blocks_per_split


def arch_of(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _io_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Kernels write the loss and the gradients in the input's dtype on the GPU. The interpreter (CPU tensors)
    truncates float32 to bfloat16 instead of rounding, so there they write the work dtype and torch rounds."""
    return dtype if device.type == "cuda" else _work_dtype(dtype)


def _kernel_tiles(config: dict, kernel: str) -> dict:
    """The shared tile entries with the kernel's own on top (a caller's config may give one kernel its own)."""
    return {**config, **config.get(kernel, {})}


def _forward_plan(num_anchors, num_candidates, dim, dtype, device, want_anchor_grad, config=None):
    """(config, the forward kernel's tiles, (anchor blocks, splits, D-chunks), blocks per split)."""
    config = config or config_for((num_anchors, num_candidates, dim), dtype, arch_of(device))
    tiles = _kernel_tiles(config, "_contrastive_fwd_kernel")
    anchor_blocks = triton.cdiv(num_anchors, tiles["BLOCK_N"])
    d_chunks = triton.cdiv(dim, tiles["BLOCK_D"]) if want_anchor_grad else 1
    splits, blocks_per_split = _split_plan(tiles, anchor_blocks * d_chunks, num_candidates, tiles["BLOCK_M"],
                                           device)
    return config, tiles, (anchor_blocks, splits, d_chunks), blocks_per_split


def saved_shapes(num_anchors, num_candidates, dim, dtype, device, normalize, reduction, want_anchor_grad,
                 want_candidate_grad, focal: bool = False, config: dict | None = None) -> Saved:
    splits = _forward_plan(num_anchors, num_candidates, dim, dtype, device, want_anchor_grad, config)[2][1]
    return Saved(norms=(num_anchors + num_candidates,) if normalize else (0,),
                 row_stats=(3 if focal else 2, num_anchors), n_valid=(1,),
                 weighted=(splits, num_anchors, dim) if want_anchor_grad else (0,),
                 split_weight=(splits, num_anchors) if want_anchor_grad else (0,), candidate_grad_unit=(0,))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x with unit stride along D (the kernels take any row stride)."""
    return x if x.stride(1) == 1 else x.contiguous()


def _index_args(index, stand_in):
    """(HAS_GROUP, HAS_LABEL, anchor group, candidate group, label): a pointer not read is ``stand_in``."""
    has_group = index.anchor_group is not None
    has_label = index.candidate_label is not None
    return (has_group, has_label, index.anchor_group if has_group else stand_in,
            index.candidate_group if has_group else stand_in, index.candidate_label if has_label else stand_in)


def forward(*, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
            want_anchor_grad: bool, want_candidate_grad: bool):
    """The loss and the Saved of contract.py, in three launches: norms (when normalising), the forward
    kernel, the loss kernel."""
    return softmax_forward(anchors=anchors, candidates=candidates, index=index, scale=scale, normalize=normalize,
                           reduction=reduction, want_anchor_grad=want_anchor_grad)


def backward(*, grad_loss, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
             saved: Saved, want_anchor_grad: bool, want_candidate_grad: bool):
    """(grad_anchors, grad_candidates) in two launches: the candidate kernel (when the candidates need a
    gradient), then the one-row gradient kernel for every row that still needs one."""
    return softmax_backward(grad_loss=grad_loss, anchors=anchors, candidates=candidates, index=index, scale=scale,
                            normalize=normalize, reduction=reduction, saved=saved,
                            want_anchor_grad=want_anchor_grad, want_candidate_grad=want_candidate_grad)[:2]


# The general launchers: the contrastive loss's (groups, labels, normalisation) and linear_focal_loss's (no
# groups, a bias, the focal transform, index = the targets with their ignore_index) on the same kernels.
def softmax_forward(*, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
                    want_anchor_grad: bool, focal: FocalTerms | None = None, bias=None, config: dict | None = None):
    """The loss and the Saved (row_stats (3, N) with ``focal``). ``index.anchor_group`` None: no exclusions.
    ``config``: the caller's tiles (linear_focal_loss has its own), default this module's ``config_for``."""
    a, c = _rows(anchors), _rows(candidates)
    num_anchors, dim = a.shape
    num_candidates = c.shape[0]
    work = _work_dtype(a.dtype)
    device = a.device
    config, tiles, grid, blocks_per_split = _forward_plan(num_anchors, num_candidates, dim, a.dtype, device,
                                                          want_anchor_grad, config)
    splits = grid[1]
    norms = torch.empty(num_anchors + num_candidates if normalize else 0, dtype=work, device=device)
    if normalize:
        norm = config["_contrastive_norm_kernel"]
        _contrastive_norm_kernel[(triton.cdiv(num_anchors + num_candidates, norm["BLOCK_R"]),)](
            a_ptr=a, c_ptr=c, norm_ptr=norms, N=num_anchors, M=num_candidates, D=dim, stride_a=a.stride(0),
            stride_c=c.stride(0), eps=NORM_EPS, BLOCK_R=norm["BLOCK_R"], BLOCK_K=norm["BLOCK_K"],
            num_warps=norm["num_warps"])
    stats = torch.empty(3, splits, num_anchors, dtype=work, device=device)     # m, l, s_ip per split
    weighted = torch.empty((splits, num_anchors, dim) if want_anchor_grad else 0, dtype=work, device=device)
    has_group, has_label, group, candidate_group, label = _index_args(index, stats)
    ignore_index = -1 if focal is None else int(focal.ignore_index)
    if num_anchors > 0:
        _contrastive_fwd_kernel[grid](
            a_ptr=a, c_ptr=c, norm_ptr=norms if normalize else stats, positive_ptr=index.positive_index,
            anchor_group_ptr=group, candidate_group_ptr=candidate_group, candidate_label_ptr=label,
            bias_ptr=stats if bias is None else bias, stats_ptr=stats,
            weighted_ptr=weighted if want_anchor_grad else stats,
            N=num_anchors, M=num_candidates, D=dim, stride_a=a.stride(0), stride_c=c.stride(0),
            blocks_per_split=blocks_per_split, scale=scale, ignore_index=ignore_index,
            NORMALIZE=normalize, HAS_GROUP=has_group, HAS_LABEL=has_label, HAS_BIAS=bias is not None,
            WANT_WEIGHTED=want_anchor_grad, PRECISION=_precision(a), UPCAST=_upcast(a), BLOCK_N=tiles["BLOCK_N"],
            BLOCK_M=tiles["BLOCK_M"], BLOCK_K=tiles["BLOCK_K"], BLOCK_D=tiles["BLOCK_D"],
            num_warps=tiles["num_warps"], num_stages=tiles["num_stages"],
        )
    row_stats = torch.empty(2 if focal is None else 3, num_anchors, dtype=work, device=device)
    split_weight = torch.empty((splits, num_anchors) if want_anchor_grad else 0, dtype=work, device=device)
    n_valid = torch.empty(1, dtype=work, device=device)
    loss = torch.empty((num_anchors,) if reduction == "none" else (), dtype=_io_dtype(a.dtype, device),
                       device=device)
    alpha = None if focal is None else focal.alpha
    rows = config["_contrastive_loss_kernel"]
    _contrastive_loss_kernel[(1,)](
        stats_ptr=stats, positive_ptr=index.positive_index, alpha_ptr=stats if alpha is None else alpha,
        row_stats_ptr=row_stats, split_weight_ptr=split_weight if want_anchor_grad else row_stats, loss_ptr=loss,
        n_valid_ptr=n_valid, N=num_anchors, M=num_candidates, n_splits=splits,
        gamma=0.0 if focal is None else float(focal.gamma), ignore_index=ignore_index,
        REDUCTION=REDUCTION_CODES[reduction], WANT_SPLIT_WEIGHT=want_anchor_grad, FOCAL=focal is not None,
        HAS_ALPHA=alpha is not None, BLOCK_R=rows["BLOCK_R"], num_warps=rows["num_warps"])
    saved = Saved(norms, row_stats, n_valid, weighted, split_weight, empty(a, work))
    return loss.to(anchors.dtype), saved


def softmax_backward(*, grad_loss, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
                     saved: Saved, want_anchor_grad: bool, want_candidate_grad: bool,
                     focal: FocalTerms | None = None, bias=None, want_bias_grad: bool = False,
                     config: dict | None = None):
    """(grad_anchors, grad_candidates, grad_bias), a 0-element tensor for each not wanted. The candidate kernel
    (candidate or bias gradient wanted) writes the candidate and bias gradients itself when it runs as one
    split without normalisation; the one-row kernel then runs for the anchors only."""
    assert bias is None or not normalize, "a bias comes only without normalisation"
    a, c = _rows(anchors), _rows(candidates)
    num_anchors, dim = a.shape
    num_candidates = c.shape[0]
    work = saved.row_stats.dtype
    device = a.device
    config = config or config_for((num_anchors, num_candidates, dim), a.dtype, arch_of(device))
    tiles = _kernel_tiles(config, "_contrastive_bwd_candidate_kernel")
    grad_stride = grad_loss.stride(0) if grad_loss.dim() == 1 else 0
    has_group, has_label, group, candidate_group, label = _index_args(index, saved.row_stats)
    ignore_index = -1 if focal is None else int(focal.ignore_index)
    norm_arg = saved.norms if normalize else saved.row_stats
    mean = reduction == "mean"
    out_dtype = _io_dtype(a.dtype, device)
    want_bias_grad = want_bias_grad and bias is not None
    grad_a = torch.empty((num_anchors, dim) if want_anchor_grad else 0, dtype=out_dtype, device=device)
    grad_c = torch.empty((num_candidates, dim) if want_candidate_grad else 0, dtype=out_dtype, device=device)
    grad_b = torch.empty(num_candidates if want_bias_grad else 0, dtype=out_dtype, device=device)
    part, bias_part, splits_c, final = saved.row_stats, saved.row_stats, 0, False
    if want_candidate_grad or want_bias_grad:
        candidate_blocks = triton.cdiv(num_candidates, tiles["BLOCK_M"])
        d_chunks = triton.cdiv(dim, tiles["BLOCK_D"])
        splits_c, blocks_per_split = _split_plan(tiles, candidate_blocks * d_chunks, max(num_anchors, 1),
                                                 tiles["BLOCK_N"], device)
        final = splits_c == 1 and not normalize
        if final:
            part = grad_c if want_candidate_grad else torch.empty(num_candidates, dim, dtype=out_dtype,
                                                                  device=device)
            bias_part = grad_b if want_bias_grad else part
        else:
            part = torch.empty(splits_c, num_candidates, dim, dtype=work, device=device)      # (S, M, D)
            bias_part = torch.empty(splits_c, num_candidates, dtype=work, device=device) if want_bias_grad else part
        _contrastive_bwd_candidate_kernel[(candidate_blocks, splits_c, d_chunks)](
            a_ptr=a, c_ptr=c, norm_ptr=norm_arg, positive_ptr=index.positive_index,
            anchor_group_ptr=group, candidate_group_ptr=candidate_group, candidate_label_ptr=label,
            bias_ptr=saved.row_stats if bias is None else bias, row_stats_ptr=saved.row_stats,
            grad_loss_ptr=grad_loss, grad_stride=grad_stride, n_valid_ptr=saved.n_valid, grad_ptr=part,
            bias_grad_ptr=bias_part, N=num_anchors, M=num_candidates, D=dim, stride_a=a.stride(0),
            stride_c=c.stride(0), blocks_per_split=blocks_per_split, scale=scale, ignore_index=ignore_index,
            NORMALIZE=normalize, HAS_GROUP=has_group, HAS_LABEL=has_label, HAS_BIAS=bias is not None,
            WANT_BIAS_GRAD=want_bias_grad, FOCAL=focal is not None, FINAL=final, MEAN=mean,
            PRECISION=_precision(a), UPCAST=_upcast(a), BLOCK_N=tiles["BLOCK_N"], BLOCK_M=tiles["BLOCK_M"],
            BLOCK_K=tiles["BLOCK_K"], BLOCK_D=tiles["BLOCK_D"], num_warps=tiles["num_warps"],
            num_stages=tiles["num_stages"],
        )
    anchor_rows = num_anchors if want_anchor_grad else 0
    candidate_rows = num_candidates if (want_candidate_grad or want_bias_grad) and not final else 0
    if anchor_rows + candidate_rows > 0:
        row = config["_contrastive_grad_kernel"]
        _contrastive_grad_kernel[(anchor_rows + candidate_rows,)](
            a_ptr=a, c_ptr=c, norm_ptr=norm_arg, positive_ptr=index.positive_index, grad_loss_ptr=grad_loss,
            grad_stride=grad_stride, n_valid_ptr=saved.n_valid, row_stats_ptr=saved.row_stats,
            weighted_ptr=saved.weighted if want_anchor_grad else saved.row_stats,
            split_weight_ptr=saved.split_weight if want_anchor_grad else saved.row_stats,
            candidate_part_ptr=part, bias_part_ptr=bias_part,
            grad_a_ptr=grad_a if want_anchor_grad else part,
            grad_c_ptr=grad_c if want_candidate_grad else part, grad_bias_ptr=grad_b if want_bias_grad else part,
            N=num_anchors, M=num_candidates, D=dim, stride_a=a.stride(0), stride_c=c.stride(0),
            splits_a=saved.weighted.shape[0] if want_anchor_grad else 0, splits_c=splits_c, scale=scale,
            anchor_rows=anchor_rows, eps=NORM_EPS, ignore_index=ignore_index, NORMALIZE=normalize, MEAN=mean,
            FOCAL=focal is not None, WANT_BIAS_GRAD=want_bias_grad, BLOCK_D=row["BLOCK_D"],
            num_warps=row["num_warps"])
    return (grad_a.to(anchors.dtype), grad_c.to(candidates.dtype),
            grad_b.to(bias.dtype) if want_bias_grad else grad_b)
