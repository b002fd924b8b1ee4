"""Triton kernels of the contrastive loss and their launchers (SPEC 6.4). No (N, M) buffer is ever written.

Notation: a_i (N, D) and c_j (M, D) are the (normalised) operands, s_ij = scale * a_i . c_j with
scale = 1/temperature, A(i) = { j : j = p_i, or group_j != group_i and label_j != label_{p_i} } the
candidates in anchor i's sum, m_i = max_{j in A(i)} s_ij, l_i = sum_{j in A(i)} exp(s_ij - m_i),
P_ij = exp(s_ij - m_i) / l_i on A(i), and loss_i = (m_i - s_{i p_i}) + log l_i.

Two kernels, four matrix products in all (the S recomputation included):
  forward  (anchor-major): m_i, l_i, s_{i p_i} and O_i = sum_j P_ij c_j, the softmax-weighted candidates.
           With O the anchor gradient needs no second pass: dL/da_i = scale * w_i * (O_i - c_{p_i}).
  backward (candidate-major): G_j = sum_i w_i (P_ij - [j = p_i]) a_i, so dL/dc_j = scale * G_j. Each program
           owns its candidate rows and loops over anchors: no atomics, deterministic.
Both grids may split their loop range over a second axis (partials combined in a fixed order by torch) to
fill the GPU when N or M alone gives too few programs, and over a third axis of output-D chunks (the score
block is then recomputed per chunk) so that a (BLOCK, BLOCK_D) fp32 accumulator fits in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from retailsim.ops.contrastive_loss.contract import AnchorStats

KEEPS_INPUT_DTYPE = True  # bf16/fp16 operands go to tl.dot as they are; accumulation is fp32

# Kernels may read module globals only when they are constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
# Finite running-max start: a block with no allowed candidate then gives exp2(-inf) = 0, not NaN.
M_INIT = tl.constexpr(-1.0e30)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 (fp64) accumulation. UPCAST: the Triton interpreter multiplies bf16 blocks wrongly
    (it treats their bits as integers, Triton 3.9), so there the operands are widened first, which gives the
    same exact bf16 x bf16 products the tensor cores form."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _score_tile(b_scores, p_a_rows, p_c_rows, o_k, m_n, m_m, D, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    """b_scores + A_tile C_tile^T over D in chunks of BLOCK_K (rows of A at p_a_rows, of C at p_c_rows).

    Every kernel recomputes its scores through this one loop, so a backward's s_ij are the forward's floats
    bit for bit (P_ip = exp(s_ip - m_i) / l_i stays exactly 1 / l_i for a confident anchor)."""
    for start_k in range(0, D, BLOCK_K):
        o_kk = start_k + o_k
        m_k = o_kk < D
        b_a = tl.load(p_a_rows + o_kk[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        b_c = tl.load(p_c_rows + o_kk[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_scores += _dot(b_a, tl.trans(b_c), PRECISION, UPCAST)
    return b_scores


@triton.jit
def _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group, b_positive_label, b_candidate_label,
                  HAS_LABEL: tl.constexpr):
    """(allowed, is_positive) [BLOCK_N, BLOCK_M] of anchors (positive index, group, positive's label: [BLOCK_N])
    against candidates o_m (group, label: [BLOCK_M]): j is in A(i) when it is i's positive, or lies in another
    group and (with labels) holds another product than the positive; never past M or for an anchor without a
    positive (-1). Every kernel builds A(i) here; without labels the two label arguments are not read."""
    b_is_positive = o_m[None, :] == b_positive[:, None]
    b_keep = b_candidate_group[None, :] != b_anchor_group[:, None]
    if HAS_LABEL:
        b_keep = b_keep & (b_candidate_label[None, :] != b_positive_label[:, None])
    return (b_keep | b_is_positive) & m_m[None, :] & (b_positive >= 0)[:, None], b_is_positive


@triton.jit(do_not_specialize=["N", "M", "blocks_per_split"])
def _contrastive_fwd_kernel(
    a_ptr, c_ptr, positive_ptr, anchor_group_ptr, candidate_group_ptr, candidate_label_ptr, positive_label_ptr,
    row_max_ptr, row_sum_ptr, positive_score_ptr, weighted_ptr,
    N, M, D, stride_a, stride_c, blocks_per_split, scale,
    HAS_LABEL: tl.constexpr, WANT_WEIGHTED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Online log-sum-exp over candidate blocks for one block of anchors.

    Computes, for anchors i of block program_id(0) and candidates j of split program_id(1):
      m_i, l_i  running max of s_ij and sum of exp(s_ij - m_i) over j in A(i)  (flash-attention recurrence)
      O_i       running sum of exp(s_ij - m_i) c_j[d-chunk program_id(2)], rescaled as m_i grows
      s_{i p_i} picked out of the score block where j = p_i (exactly one split sees it)
    and writes, per split, m (M_INIT, l = 0 when the split holds nothing of A(i)), l, O / l and the positive
    score. m stays in natural units (not log2) so that loss_i = (m_i - s_ip) + log l_i is exact to rounding of
    log l_i: for a confident anchor m_i and s_ip are the same float, and no cancellation of two large LSE terms
    happens. Grid: (cdiv(N, BLOCK_N), splits, cdiv(D, BLOCK_D) if WANT_WEIGHTED else 1).
    """
    i_n, i_s, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc_dtype = row_sum_ptr.dtype.element_ty
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
        b_scores = _score_tile(tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_dtype), p_a_rows, p_c_rows, o_k, m_n, m_m, D,
                               BLOCK_K, PRECISION, UPCAST) * scale

        b_candidate_group = tl.load(candidate_group_ptr + o_m, mask=m_m, other=0)
        b_candidate_label = b_candidate_group  # stand-in, not read without labels
        if HAS_LABEL:
            b_candidate_label = tl.load(candidate_label_ptr + o_m, mask=m_m, other=0)
        b_allowed, b_is_positive = _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group,
                                                 b_positive_label, b_candidate_label, HAS_LABEL)

        b_masked = tl.where(b_allowed, b_scores, float("-inf"))
        b_max_new = tl.maximum(b_max, tl.max(b_masked, axis=1))
        b_rescale = tl.exp2((b_max - b_max_new) * LOG2E)
        b_p = tl.exp2((b_masked - b_max_new[:, None]) * LOG2E)
        b_sum = b_sum * b_rescale + tl.sum(b_p, axis=1)
        b_positive_score += tl.sum(tl.where(b_is_positive & m_m[None, :], b_scores, 0.0), axis=1)
        if WANT_WEIGHTED:
            b_c_out = tl.load(p_c_rows + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
            b_weighted = b_weighted * b_rescale[:, None] + _dot(b_p.to(b_c_out.dtype), b_c_out, PRECISION, UPCAST)
        b_max = b_max_new

    o_part = i_s.to(tl.int64) * N + o_n
    if i_d == 0:  # every D-chunk computed the same m and l; the first one writes them
        tl.store(row_max_ptr + o_part, b_max, mask=m_n)
        tl.store(row_sum_ptr + o_part, b_sum, mask=m_n)
        tl.store(positive_score_ptr + o_part, b_positive_score, mask=m_n)
    if WANT_WEIGHTED:
        b_weighted = b_weighted / tl.where(b_sum > 0, b_sum, 1.0)[:, None]
        p_weighted = weighted_ptr + o_part[:, None] * D + o_d[None, :]
        tl.store(p_weighted, b_weighted, mask=m_n[:, None] & m_d[None, :])


@triton.jit(do_not_specialize=["N", "M", "blocks_per_split"])
def _contrastive_bwd_candidate_kernel(
    a_ptr, c_ptr, positive_ptr, anchor_group_ptr, candidate_group_ptr, candidate_label_ptr, positive_label_ptr,
    row_max_ptr, inv_row_sum_ptr, row_weight_ptr, grad_ptr,
    N, M, D, stride_a, stride_c, blocks_per_split, scale,
    HAS_LABEL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Candidate gradient by recomputation: G_j = sum_i dS_ij a_i with dS_ij = w_i (P_ij - [j = p_i]).

    Derivation: L = sum_i w_i loss_i (w_i = upstream gradient times the reduction's weight, 0 for ignored
    anchors); d loss_i / d s_ij = P_ij - [j = p_i] on A(i) and 0 elsewhere; s_ij = scale a_i . c_j, so
    dL/dc_j = scale * G_j (the launcher's caller applies scale). P_ij = exp(s_ij - m_i) / l_i comes from
    the forward's stored m_i and 1 / l_i, so one pass suffices. Grid: (cdiv(M, BLOCK_M), splits over anchor blocks,
    cdiv(D, BLOCK_D)); each program writes its own rows of its split's partial G, never another's.
    """
    i_m, i_s, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc_dtype = grad_ptr.dtype.element_ty
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    o_k = tl.arange(0, BLOCK_K)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D

    b_candidate_group = tl.load(candidate_group_ptr + o_m, mask=m_m, other=0)
    b_candidate_label = b_candidate_group  # stand-in, not read without labels
    if HAS_LABEL:
        b_candidate_label = tl.load(candidate_label_ptr + o_m, mask=m_m, other=0)
    p_c_rows = c_ptr + o_m.to(tl.int64)[:, None] * stride_c
    b_grad = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_dtype)

    lo = i_s * blocks_per_split * BLOCK_N
    hi = tl.minimum(lo + blocks_per_split * BLOCK_N, N)
    for start_n in range(lo, hi, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        p_a_rows = a_ptr + o_n.to(tl.int64)[:, None] * stride_a
        b_positive = tl.load(positive_ptr + o_n, mask=m_n, other=-1)
        b_anchor_group = tl.load(anchor_group_ptr + o_n, mask=m_n, other=0)
        b_row_max = tl.load(row_max_ptr + o_n, mask=m_n, other=0.0)
        b_inv_row_sum = tl.load(inv_row_sum_ptr + o_n, mask=m_n, other=0.0)
        b_row_weight = tl.load(row_weight_ptr + o_n, mask=m_n, other=0.0)

        b_scores = _score_tile(tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_dtype), p_a_rows, p_c_rows, o_k, m_n, m_m, D,
                               BLOCK_K, PRECISION, UPCAST) * scale

        b_positive_label = b_positive  # stand-in, not read without labels
        if HAS_LABEL:
            b_positive_label = tl.load(positive_label_ptr + o_n, mask=m_n, other=0)
        b_allowed, b_is_positive = _allowed_tile(o_m, m_m, b_positive, b_anchor_group, b_candidate_group,
                                                 b_positive_label, b_candidate_label, HAS_LABEL)

        # Masked before the exponent: a disallowed candidate may score far above the row's max (exp2 overflows
        # to inf, and inf * 0 on a padding row is NaN); exp2(-inf) = 0 keeps every lane finite.
        b_p = tl.exp2(tl.where(b_allowed, b_scores - b_row_max[:, None], float("-inf")) * LOG2E) * b_inv_row_sum[:, None]
        b_d_scores = b_row_weight[:, None] * (b_p - tl.where(b_is_positive, 1.0, 0.0))
        b_a_out = tl.load(p_a_rows + o_d[None, :], mask=m_n[:, None] & m_d[None, :], other=0.0)
        b_grad += _dot(tl.trans(b_d_scores.to(b_a_out.dtype)), b_a_out, PRECISION, UPCAST)

    p_grad = grad_ptr + (i_s.to(tl.int64) * M + o_m)[:, None] * D + o_d[None, :]
    tl.store(p_grad, b_grad, mask=m_m[:, None] & m_d[None, :])


# --------------------------------------------------------------------------------------------- launchers

# Tile shapes by operand kind. Under the interpreter (CPU tests) small tiles keep numpy fast and exercise the
# masks; tests may replace this dict's entries through ``config_override``.
_INTERPRET_CONFIG = dict(BLOCK_N=16, BLOCK_M=32, BLOCK_K=16, BLOCK_D=32, num_warps=4, num_stages=1, splits=None)
_CUDA_CONFIG = {
    # H100 sweep at 4096 x 4096 x 512 bf16 (triton 3.6), fwd+bwd: 64 x 64 tiles, 4 warps, D in chunks of 256
    # was the best of eight tile shapes (2.0 ms; eager 2.3 ms); all of them spill registers (255 regs).
    "half": dict(BLOCK_N=64, BLOCK_M=64, BLOCK_K=64, BLOCK_D=256, num_warps=4, num_stages=2, splits=None),
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


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None) -> dict:
    """The tile shapes and warps for (N, M, D) operands of ``dtype``: ``arch`` None means the interpreter
    (CPU tensors), any CUDA arch the CUDA table (one for every arch today), with ``config_override`` on top."""
    dim = shape[2]
    if arch is None:
        config = dict(_INTERPRET_CONFIG)
    else:
        kind = "float64" if dtype == torch.float64 else ("float32" if dtype == torch.float32 else "half")
        config = dict(_CUDA_CONFIG[kind])
    config.update(_override)
    # A chunk of D wider than D itself only pads: shrink it to the power of two covering D (>= 16 for tl.dot).
    config["BLOCK_D"] = min(config["BLOCK_D"], max(16, triton.next_power_of_2(dim)))
    config["BLOCK_K"] = min(config["BLOCK_K"], max(16, triton.next_power_of_2(dim)))
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


def _arch(operand: torch.Tensor) -> str | None:
    if operand.device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(operand.device)
    return f"sm_{major}{minor}"


def forward(*, a_op, c_op, index, scale: float, want_anchor_grad: bool, unit_weight=None) -> AnchorStats:
    """Per anchor: max m_i and sum l_i of the allowed scores (m = M_INIT, l = 0 where ignored), the positive
    score and, if asked, O_i = sum_j P_ij c_j. The candidate gradient always needs the second kernel (a row
    of P is only known once the anchor's whole loop is done), so ``unit_weight`` is not used here.
    """
    num_anchors, dim = a_op.shape
    num_candidates = c_op.shape[0]
    acc_dtype = torch.float64 if a_op.dtype == torch.float64 else torch.float32
    config = config_for((num_anchors, num_candidates, dim), a_op.dtype, _arch(a_op))
    anchor_blocks = triton.cdiv(num_anchors, config["BLOCK_N"])
    d_chunks = triton.cdiv(dim, config["BLOCK_D"]) if want_anchor_grad else 1
    splits, blocks_per_split = _split_plan(config, anchor_blocks * d_chunks, num_candidates,
                                           config["BLOCK_M"], a_op.device)
    row_max, row_sum, positive_score = torch.empty(3, splits, num_anchors, device=a_op.device,
                                                   dtype=acc_dtype)                               # (S, N) each
    weighted = (torch.empty(splits, num_anchors, dim, device=a_op.device, dtype=acc_dtype)       # (S, N, D)
                if want_anchor_grad else row_sum)
    has_label = index.candidate_label is not None
    if num_anchors > 0:
        _contrastive_fwd_kernel[(anchor_blocks, splits, d_chunks)](
            a_ptr=a_op, c_ptr=c_op, positive_ptr=index.positive_index, anchor_group_ptr=index.anchor_group,
            candidate_group_ptr=index.candidate_group,
            candidate_label_ptr=index.candidate_label if has_label else index.candidate_group,
            positive_label_ptr=index.positive_label if has_label else index.anchor_group,
            row_max_ptr=row_max, row_sum_ptr=row_sum, positive_score_ptr=positive_score, weighted_ptr=weighted,
            N=num_anchors, M=num_candidates, D=dim, stride_a=a_op.stride(0), stride_c=c_op.stride(0),
            blocks_per_split=blocks_per_split, scale=scale,
            HAS_LABEL=has_label, WANT_WEIGHTED=want_anchor_grad, PRECISION=_precision(a_op), UPCAST=_upcast(a_op),
            BLOCK_N=config["BLOCK_N"], BLOCK_M=config["BLOCK_M"], BLOCK_K=config["BLOCK_K"],
            BLOCK_D=config["BLOCK_D"], num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
    if splits == 1:
        return AnchorStats(row_max[0], row_sum[0], positive_score[0], weighted[0] if want_anchor_grad else None, None)
    # Merge the splits: a split holding none of A(i) has m = M_INIT and l = 0, so it weighs nothing.
    total_max = row_max.max(dim=0).values                                                         # (N,)
    split_sum = row_sum * torch.exp(row_max - total_max)                                          # (S, N)
    total_sum = split_sum.sum(dim=0)                                                              # (N,)
    weighted_total = None
    if want_anchor_grad:  # accumulated split by split (fixed order, no (S, N, D) temporary)
        split_weight = split_sum / torch.where(total_sum > 0, total_sum, torch.ones_like(total_sum))
        weighted_total = weighted[0] * split_weight[0, :, None]                                   # (N, D)
        for split in range(1, splits):
            weighted_total.addcmul_(weighted[split], split_weight[split, :, None])
    return AnchorStats(total_max, total_sum, positive_score.sum(dim=0), weighted_total, None)


def candidate_grad(*, a_op, c_op, index, scale: float, row_max: torch.Tensor, row_sum: torch.Tensor,
                   row_weight: torch.Tensor) -> torch.Tensor:
    """(M, D): G_j = sum_i w_i (P_ij - [j = p_i]) a_i, in float32 (float64 for float64 operands)."""
    num_anchors, dim = a_op.shape
    num_candidates = c_op.shape[0]
    acc_dtype = torch.float64 if a_op.dtype == torch.float64 else torch.float32
    config = config_for((num_anchors, num_candidates, dim), a_op.dtype, _arch(a_op))
    candidate_blocks = triton.cdiv(num_candidates, config["BLOCK_M"])
    d_chunks = triton.cdiv(dim, config["BLOCK_D"])
    splits, blocks_per_split = _split_plan(config, candidate_blocks * d_chunks, max(num_anchors, 1),
                                           config["BLOCK_N"], a_op.device)
    grad = torch.empty(splits, num_candidates, dim, device=a_op.device, dtype=acc_dtype)          # (S, M, D)
    if num_anchors == 0:
        return grad.zero_()[0]
    has_label = index.candidate_label is not None
    _contrastive_bwd_candidate_kernel[(candidate_blocks, splits, d_chunks)](
        a_ptr=a_op, c_ptr=c_op, positive_ptr=index.positive_index, anchor_group_ptr=index.anchor_group,
        candidate_group_ptr=index.candidate_group,
        candidate_label_ptr=index.candidate_label if has_label else index.candidate_group,
        positive_label_ptr=index.positive_label if has_label else index.anchor_group,
        row_max_ptr=row_max.to(acc_dtype).contiguous(), inv_row_sum_ptr=(1.0 / row_sum).to(acc_dtype).contiguous(),
        row_weight_ptr=row_weight.to(acc_dtype).contiguous(),
        grad_ptr=grad,
        N=num_anchors, M=num_candidates, D=dim, stride_a=a_op.stride(0), stride_c=c_op.stride(0),
        blocks_per_split=blocks_per_split, scale=scale,
        HAS_LABEL=has_label, PRECISION=_precision(a_op), UPCAST=_upcast(a_op),
        BLOCK_N=config["BLOCK_N"], BLOCK_M=config["BLOCK_M"], BLOCK_K=config["BLOCK_K"],
        BLOCK_D=config["BLOCK_D"], num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return grad[0] if splits == 1 else grad.sum(dim=0)
