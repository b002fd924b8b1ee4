"""Triton kernels of the softmax focal loss and their launchers (kernels and launchers only).

Forward: one program per row streams the vocabulary in BLOCK_V chunks for the row's log-sum-exp (per-lane
online max and sum, one block reduction) and writes the row's loss and (lse, ce); with COMPUTE_GRAD (the
path of linear_focal_loss) a second pass writes the gradient, into its own buffer or over the logits.
Reduction: one program sums or averages the rows. Backward: one program per row writes the gradient from
(lse, ce) with grad_output applied. The row count is the grid and L-like sizes are runtime ints; V stays
specialised (see the kernel), so a new batch size never recompiles.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from retailsim.ops.focal_loss.contract import FocalRows

REDUCTION_CODES = {"none": 0, "sum": 1, "mean": 2}
MAX_BLOCK_V = 4096  # widest vocabulary chunk one program holds in registers (num_warps scales with it)


@triton.jit
def _expm1_neg(x):
    # -expm1(-x) = 1 - exp(-x) for x >= 0 without cancellation: Taylor series (Horner, 7 terms) below 0.25,
    # where it is exact to < 1e-8 relative, else 1 - exp(-x), whose relative error there is < 3e-7.
    tail = 1.0 / 24.0 - x * (1.0 / 120.0 - x * (1.0 / 720.0 - x / 5040.0))
    series = x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x * tail)))
    return tl.where(x < 0.25, series, 1.0 - tl.exp(-x))


@triton.jit
def _log1p(x):
    # log1p(x) for x >= 0 = 2 atanh(t), t = x / (2 + x): five odd terms are exact to < 1e-9 relative while
    # x < 0.25 (t < 0.112); above that log(1 + x) loses nothing.
    t = x / (2.0 + x)
    t2 = t * t
    series = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 / 9.0))))
    return tl.where(x < 0.25, series, tl.log(1.0 + x))


@triton.jit
def _merge_max_rest(max_a, rest_a, max_b, rest_b):
    # Two partial log-sum-exps (m, rest), each sum(exp(z - m)) over its logits without one copy of its max m
    # (that copy is the implicit 1 of lse = m + log1p(rest)), merged into one: the smaller side's implicit 1
    # joins the rest, scaled by exp(m_small - m_big). A side with no finite logit yet (m = -inf, rest = 0)
    # adds nothing: the exponent is guarded, so no lane ever computes -inf - -inf. Associative and
    # commutative, so it is also the combine of the row's one block reduction.
    big = tl.maximum(max_a, max_b, propagate_nan=tl.PropagateNan.ALL)   # a NaN logit makes the row NaN
    small = tl.minimum(max_a, max_b, propagate_nan=tl.PropagateNan.ALL)
    scale = tl.exp(small - tl.where(big == float("-inf"), 0.0, big))
    small_rest = tl.where(max_a >= max_b, rest_b, rest_a)
    big_rest = tl.where(max_a >= max_b, rest_a, rest_b)
    return big, big_rest + (small_rest + 1.0) * scale


# n_cols (the vocabulary) stays specialised on purpose: it is fixed for a model, and when it divides by 16 the
# masks fold away (kernel report, sm_90, V = 131072: 209 hot-loop instructions specialised, 230 not). The row
# count is the grid, never an argument, so a new batch size never recompiles.
@triton.jit(do_not_specialize=["ignore_index"])
def _focal_loss_kernel(
    logits_ptr, stride_logits,  # (N, V) rows, unit stride along V
    grad_ptr, stride_grad,  # (N, V) output gradient; may be logits_ptr itself (in place)
    target_ptr,  # (N,) int
    alpha_ptr,  # (V,) float, read only when HAS_ALPHA
    loss_ptr,  # (N,) per-row loss (ignored rows 0), fp32 or the output dtype
    stats_ptr,  # (N, 2) (lse, ce) per row in ACC_DTYPE, written only when SAVE_STATS
    n_valid_ptr,  # () int64 number of non-ignored rows, read only when COMPUTE_GRAD and REDUCTION == 2 (mean)
    n_cols, gamma, ignore_index,
    HAS_ALPHA: tl.constexpr, REDUCTION: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SAVE_STATS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # Softmax focal loss of one row z (length V, target y), fp32 math (ACC_DTYPE: fp64 for fp64 input, so that
    # a float64 gradcheck can judge the formulas) whatever the input dtype.
    #   grid: (N,), program i_row owns row i_row; the V loop runs ceil(V / BLOCK_V) chunks, the last masked.
    # Formula. m = max z, rest = sum_{j != one argmax} exp(z_j - m) (the argmax's own 1 kept out of the sum so
    #   that log1p keeps its precision when p_y -> 1), lse = m + log1p(rest),
    #   ce = -log p_y = (m - z_y) + log1p(rest) >= 0,  q = 1 - p_y = -expm1(-ce),
    #   FL = alpha_y q^gamma ce.
    # Gradient. d ce/dz_j = p_j - d_jy;  d q/dz_j = -d p_y/dz_j = -p_y (d_jy - p_j) = p_y (p_j - d_jy), so
    #   dFL/dz_j = alpha_y [gamma q^(gamma-1) p_y ce + q^gamma] (p_j - d_jy)
    #            = alpha_y q^gamma [1 + gamma p_y (ce / q)] (p_j - d_jy) =: coef (p_j - d_jy).
    #   Written with q^gamma and ce/q (-> 1 as q -> 0, set to 1 at q == 0) it stays finite for gamma < 1, where
    #   q^(gamma-1) alone would blow up; gamma = 0 gives coef = alpha_y, the cross-entropy gradient. At j == y
    #   the factor p_y - 1 is written as -q, which keeps its digits when p_y -> 1.
    #   coef also carries the reduction: 1/n_valid for mean (n_valid read on device: no host sync), 1 for sum
    #   and none (none is scaled per row by grad_output in backward), 0 on ignored rows.
    # An out-of-range target (neither ignore_index nor in [0, V)) cannot raise on the device: its loss and
    # gradient row are NaN, so the loss says so, and no memory outside the row is read.
    i_row = tl.program_id(0).to(tl.int64)
    p_logits = logits_ptr + i_row * stride_logits
    p_grad = grad_ptr + i_row * stride_grad
    y = tl.load(target_ptr + i_row).to(tl.int64)
    is_ignored = y == ignore_index
    in_range = (y >= 0) & (y < n_cols)
    y_safe = tl.where(in_range, y, 0)
    z_y = tl.load(p_logits + y_safe).to(ACC_DTYPE)
    o_v = tl.arange(0, BLOCK_V)

    # Pass 1: per lane, an online max and the sum of exp(z - max) without the lane's own copy of its max; one
    # block reduction (_merge_max_rest) per row combines the lanes.
    l_max = tl.full([BLOCK_V], float("-inf"), ACC_DTYPE)
    l_rest = tl.zeros([BLOCK_V], ACC_DTYPE)
    for v_start in range(0, n_cols, BLOCK_V):
        o_col = v_start + o_v
        b_z = tl.load(p_logits + o_col, mask=o_col < n_cols, other=float("-inf")).to(ACC_DTYPE)
        l_max, l_rest = _merge_max_rest(l_max, l_rest, b_z, tl.zeros_like(l_rest))
    b_max, b_rest = tl.reduce((l_max, l_rest), 0, _merge_max_rest)

    ce = tl.maximum((b_max - z_y) + _log1p(b_rest), 0.0, propagate_nan=tl.PropagateNan.ALL)
    lse = b_max + _log1p(b_rest)
    if HAS_ALPHA:
        alpha_y = tl.load(alpha_ptr + y_safe).to(ACC_DTYPE)
    else:
        alpha_y = 1.0
    loss, coef, q = _focal_terms(ce, gamma, alpha_y)
    loss = tl.where(is_ignored, 0.0, tl.where(in_range, loss, float("nan")))
    tl.store(loss_ptr + i_row, loss.to(loss_ptr.dtype.element_ty))
    if SAVE_STATS:  # what the backward kernel needs of this row: lse for p_j, ce (not lse - z_y: it cancels)
        tl.store(stats_ptr + 2 * i_row, lse)
        tl.store(stats_ptr + 2 * i_row + 1, ce)
    if COMPUTE_GRAD:
        if REDUCTION == 2:
            n_valid = tl.load(n_valid_ptr).to(ACC_DTYPE)
            coef = coef / tl.maximum(n_valid, 1.0)
        coef = tl.where(is_ignored, 0.0, tl.where(in_range, coef, float("nan")))
        _write_grad(p_logits, p_grad, lse, coef, q, y, n_cols, o_v, ACC_DTYPE, BLOCK_V)


@triton.jit
def _focal_terms(ce, gamma, alpha_y):
    """(loss, gradient coefficient, q = 1 - p_y) of one row from its cross-entropy ce (kernel header)."""
    q = _expm1_neg(ce)
    # q^gamma with 0^0 = 1 (gamma = 0 is cross-entropy) and 0^gamma = 0 for gamma > 0.
    q_pow = tl.where(q > 0.0, tl.exp(gamma * tl.log(tl.maximum(q, 1e-38))), tl.where(gamma == 0.0, 1.0, 0.0))
    ce_over_q = tl.where(q > 0.0, ce / tl.maximum(q, 1e-38), 1.0)
    return alpha_y * q_pow * ce, alpha_y * q_pow * (1.0 + gamma * tl.exp(-ce) * ce_over_q), q


@triton.jit
def _write_grad(p_logits, p_grad, lse, coef, q, y, n_cols, o_v, ACC_DTYPE: tl.constexpr, BLOCK_V: tl.constexpr):
    # coef (p_j - d_jy) chunk by chunk, p_j = exp(z_j - lse) and p_y - 1 = -q (each chunk is read before it is
    # overwritten when the gradient goes over the logits).
    for v_start in range(0, n_cols, BLOCK_V):
        o_col = v_start + o_v
        m_col = o_col < n_cols
        b_z = tl.load(p_logits + o_col, mask=m_col, other=0.0).to(ACC_DTYPE)
        b_grad = coef * tl.where(o_col == y, -q, tl.exp(b_z - lse))
        tl.store(p_grad + o_col, b_grad.to(p_grad.dtype.element_ty), mask=m_col)


# The backward of focal_loss: the gradient of each row from the forward's (lse, ce), scaled by grad_loss (a
# scalar, stride 0, or one value per row) and, for the mean, 1 / n_valid (both read on the device). One pass:
# read the logits, write the gradient. Grid (N,).
@triton.jit(do_not_specialize=["ignore_index"])
def _focal_loss_bwd_kernel(
    logits_ptr, stride_logits, grad_ptr, stride_grad, target_ptr, alpha_ptr, stats_ptr,
    grad_loss_ptr, stride_grad_loss, n_valid_ptr, n_cols, gamma, ignore_index,
    HAS_ALPHA: tl.constexpr, REDUCTION: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    i_row = tl.program_id(0).to(tl.int64)
    y = tl.load(target_ptr + i_row).to(tl.int64)
    is_ignored = y == ignore_index
    in_range = (y >= 0) & (y < n_cols)
    y_safe = tl.where(in_range, y, 0)
    if HAS_ALPHA:
        alpha_y = tl.load(alpha_ptr + y_safe).to(ACC_DTYPE)
    else:
        alpha_y = 1.0
    lse = tl.load(stats_ptr + 2 * i_row).to(ACC_DTYPE)
    ce = tl.load(stats_ptr + 2 * i_row + 1).to(ACC_DTYPE)
    _, coef, q = _focal_terms(ce, gamma, alpha_y)
    coef = coef * tl.load(grad_loss_ptr + i_row * stride_grad_loss).to(ACC_DTYPE)
    if REDUCTION == 2:
        coef = coef / tl.maximum(tl.load(n_valid_ptr).to(ACC_DTYPE), 1.0)
    coef = tl.where(is_ignored, 0.0, tl.where(in_range, coef, float("nan")))
    _write_grad(logits_ptr + i_row * stride_logits, grad_ptr + i_row * stride_grad, lse, coef, q, y, n_cols,
                tl.arange(0, BLOCK_V), ACC_DTYPE, BLOCK_V)


# The reduction of focal_loss in one program: the per-row losses summed and the rows that count (target not
# ignore_index) counted in a fixed order (deterministic); writes the loss in its output dtype, the sum or
# the mean (0 when every row is ignored), and the count the backward's mean divides by.
@triton.jit(do_not_specialize=["n_rows", "ignore_index"])
def _focal_reduce_kernel(loss_rows_ptr, target_ptr, out_ptr, n_valid_ptr, n_rows, ignore_index,
                         MEAN: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr):
    o_r = tl.arange(0, BLOCK_R)
    b_total = tl.zeros([BLOCK_R], ACC_DTYPE)
    b_count = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, n_rows, BLOCK_R):
        o_row = start + o_r
        m_row = o_row < n_rows
        b_total += tl.load(loss_rows_ptr + o_row, mask=m_row, other=0.0).to(ACC_DTYPE)
        y = tl.load(target_ptr + o_row, mask=m_row, other=ignore_index).to(tl.int64)
        b_count += tl.where(m_row & (y != ignore_index), 1, 0).to(tl.int64)
    total = tl.sum(b_total, axis=0)
    count = tl.sum(b_count, axis=0)
    tl.store(n_valid_ptr, count)
    if MEAN:
        total = total / tl.maximum(count.to(ACC_DTYPE), 1.0)
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


REDUCE_BLOCK = 1024  # rows the reduction program sums per step


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """BLOCK_V (the V chunk one program loads at a time), num_warps and grid of the forward and backward
    kernels for (N, V) logits, on every arch; the reduction's own under its kernel's name."""
    # The widest chunk that pads the row least: V = 5003 takes 1024 (5 chunks, 2% masked), not 4096 (39%).
    vocab = max(1, shape[1])
    widths = [w for w in (MAX_BLOCK_V, MAX_BLOCK_V // 2, MAX_BLOCK_V // 4) if w <= triton.next_power_of_2(vocab)]
    block_v = min(widths, key=lambda w: (triton.cdiv(vocab, w) * w, -w)) if widths else triton.next_power_of_2(vocab)
    return {"BLOCK_V": block_v, "num_warps": 4 if block_v <= 1024 else (8 if block_v <= 2048 else 16),
            "grid": (shape[0],),
            "_focal_reduce_kernel": {"BLOCK_R": REDUCE_BLOCK, "num_warps": 4, "grid": (1,)}}


def _acc(logits: torch.Tensor):
    return (torch.float64, tl.float64) if logits.dtype == torch.float64 else (torch.float32, tl.float32)


def forward(
    *,
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor | None,
    gamma: float,
    ignore_index: int,
    reduction: str,
    compute_grad: bool,
    grad_out: torch.Tensor | None = None,
    n_valid: torch.Tensor | None = None,
    save_stats: bool = False,
    loss_dtype: torch.dtype | None = None,
) -> FocalRows:
    """Per-row loss (N,) (in ``loss_dtype``, default the compute dtype), the per-row (lse, ce) when
    ``save_stats``, and, when ``compute_grad``, the gradient (N, V) in logits' dtype, scaled for ``reduction``
    (mean: by 1/n_valid, ``n_valid`` a device scalar counted here when not given).

    logits (N, V) with unit stride along V; target (N,) int; alpha (V,) or None. ``grad_out`` may be
    ``logits`` itself (in place) or any (N, V) buffer; default a new one.
    """
    n_rows, n_cols = logits.shape
    assert logits.stride(1) == 1 and target.shape == (n_rows,)
    acc_dtype, acc_tl = _acc(logits)
    loss = torch.empty(n_rows, dtype=loss_dtype or acc_dtype, device=logits.device)
    stats = torch.empty((n_rows, 2), dtype=acc_dtype, device=logits.device) if save_stats else None
    if compute_grad and grad_out is None:
        grad_out = torch.empty_like(logits)
    if compute_grad and reduction == "mean" and n_valid is None:
        n_valid = (target != ignore_index).sum()
    if n_rows == 0:
        return FocalRows(loss, grad_out, stats)
    config = config_for((n_rows, n_cols), logits.dtype)
    block_v, num_warps = config["BLOCK_V"], config["num_warps"]
    _focal_loss_kernel[config["grid"]](
        logits_ptr=logits, stride_logits=logits.stride(0),
        grad_ptr=grad_out if compute_grad else logits, stride_grad=grad_out.stride(0) if compute_grad else 0,
        target_ptr=target, alpha_ptr=alpha if alpha is not None else loss,
        loss_ptr=loss, stats_ptr=stats if stats is not None else loss,
        n_valid_ptr=n_valid if n_valid is not None else target,
        n_cols=n_cols, gamma=float(gamma), ignore_index=int(ignore_index),
        HAS_ALPHA=alpha is not None, REDUCTION=REDUCTION_CODES[reduction], COMPUTE_GRAD=compute_grad,
        SAVE_STATS=save_stats, ACC_DTYPE=acc_tl, BLOCK_V=block_v, num_warps=num_warps,
    )
    return FocalRows(loss, grad_out, stats)


def reduce(*, loss_rows: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
           out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sum or mean of the per-row losses as a () tensor of ``out_dtype``, the () int64 count of rows
    that count), in one launch."""
    out = torch.empty((), dtype=out_dtype, device=loss_rows.device)
    n_valid = torch.empty((), dtype=torch.int64, device=loss_rows.device)
    launch = config_for((loss_rows.shape[0], 1), loss_rows.dtype)["_focal_reduce_kernel"]
    _focal_reduce_kernel[launch["grid"]](
        loss_rows_ptr=loss_rows, target_ptr=target, out_ptr=out, n_valid_ptr=n_valid,
        n_rows=loss_rows.shape[0], ignore_index=int(ignore_index), MEAN=reduction == "mean",
        ACC_DTYPE=_acc(loss_rows)[1], BLOCK_R=launch["BLOCK_R"], num_warps=launch["num_warps"])
    return out, n_valid


def backward(*, logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None, gamma: float,
             ignore_index: int, reduction: str, stats: torch.Tensor, grad_loss: torch.Tensor,
             n_valid: torch.Tensor | None, grad_out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient (N, V) in logits' dtype from the forward's ``stats``, times ``grad_loss`` (a () tensor, or
    (N,) for reduction "none") and, for the mean, 1 / n_valid; into ``grad_out`` (may be ``logits``) or a new
    buffer. One launch."""
    n_rows, n_cols = logits.shape
    grad_out = torch.empty_like(logits) if grad_out is None else grad_out
    if n_rows == 0:
        return grad_out
    config = config_for((n_rows, n_cols), logits.dtype)
    _focal_loss_bwd_kernel[config["grid"]](
        logits_ptr=logits, stride_logits=logits.stride(0), grad_ptr=grad_out, stride_grad=grad_out.stride(0),
        target_ptr=target, alpha_ptr=alpha if alpha is not None else stats, stats_ptr=stats,
        grad_loss_ptr=grad_loss, stride_grad_loss=grad_loss.stride(0) if grad_loss.dim() else 0,
        n_valid_ptr=n_valid if n_valid is not None else target,
        n_cols=n_cols, gamma=float(gamma), ignore_index=int(ignore_index),
        HAS_ALPHA=alpha is not None, REDUCTION=REDUCTION_CODES[reduction], ACC_DTYPE=_acc(logits)[1],
        BLOCK_V=config["BLOCK_V"], num_warps=config["num_warps"],
    )
    return grad_out
