"""Triton kernel of the softmax focal loss and its launcher (kernels and launchers only).

One program per row streams the vocabulary twice in BLOCK_V chunks: pass 1 finds the row's log-sum-exp
online, pass 2 writes the gradient (into its own buffer, or over the logits when the caller asks). Row count
and V are runtime ints; only the block size and flags are constexpr, so a new batch size never recompiles.
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


# n_cols (the vocabulary) stays specialised on purpose: it is fixed for a model, and when it divides by 16 the
# masks fold away (kernel report, sm_90, V = 131072: 209 hot-loop instructions specialised, 230 not). The row
# count is the grid, never an argument, so a new batch size never recompiles.
@triton.jit(do_not_specialize=["ignore_index"])
def _focal_loss_kernel(
    logits_ptr, stride_logits,  # (N, V) rows, unit stride along V
    grad_ptr, stride_grad,  # (N, V) output gradient; may be logits_ptr itself (in place)
    target_ptr,  # (N,) int
    alpha_ptr,  # (V,) float, read only when HAS_ALPHA
    loss_ptr,  # (N,) fp32 per-row loss (ignored rows 0)
    n_valid_ptr,  # () int64 number of non-ignored rows, read only when REDUCTION == 2 (mean)
    n_cols, gamma, ignore_index,
    HAS_ALPHA: tl.constexpr, REDUCTION: tl.constexpr, COMPUTE_GRAD: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_V: tl.constexpr,
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

    # Pass 1: online max and the sum of exp(z - m) without one copy of the max.
    # Scalars of ACC_DTYPE from reductions: a loop-carried Python float would be fp32 and clash with fp64.
    b_max = tl.max(tl.full([BLOCK_V], float("-inf"), ACC_DTYPE), axis=0)
    b_rest = tl.sum(tl.zeros([BLOCK_V], ACC_DTYPE), axis=0)
    for v_start in range(0, n_cols, BLOCK_V):
        o_col = v_start + o_v
        m_col = o_col < n_cols
        b_z = tl.load(p_logits + o_col, mask=m_col, other=float("-inf")).to(ACC_DTYPE)
        chunk_max = tl.max(b_z, axis=0)
        new_max = tl.maximum(b_max, chunk_max)
        # While every logit so far is -inf (masked-out classes), subtract 0 instead: -inf - (-inf) would be a
        # NaN in lanes that are discarded anyway, and exp(-inf - 0) = 0 is what they need.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        is_top = b_z == chunk_max
        n_top = tl.sum(is_top.to(ACC_DTYPE), axis=0)
        b_e = tl.where(is_top, 0.0, tl.exp(b_z - shift))
        # This chunk's own max contributes exp(chunk_max - new_max) per copy; one copy of the overall max is
        # the implicit 1 of lse, so it stays out of rest.
        top_term = tl.exp(chunk_max - shift)
        old_scale = tl.exp(b_max - shift)
        # Old state: (1 + rest) * exp(old_max - new_max) when the max moved on, with its implicit 1 joining rest.
        moved = chunk_max > b_max
        chunk_rest = tl.sum(b_e, axis=0) + tl.where(moved, (n_top - 1.0) * top_term, n_top * top_term)
        # A chunk of -inf logits (masked-out classes) adds nothing, and must not add exp(-inf + inf) = NaN.
        chunk_rest = tl.where(chunk_max == float("-inf"), 0.0, chunk_rest)
        old_rest = tl.where(moved, tl.where(b_max == float("-inf"), 0.0, (1.0 + b_rest) * old_scale), b_rest)
        b_rest = old_rest + chunk_rest
        b_max = new_max

    ce = tl.maximum((b_max - z_y) + _log1p(b_rest), 0.0)
    lse = b_max + _log1p(b_rest)
    q = _expm1_neg(ce)
    # q^gamma with 0^0 = 1 (gamma = 0 is cross-entropy) and 0^gamma = 0 for gamma > 0.
    q_pow = tl.where(q > 0.0, tl.exp(gamma * tl.log(tl.maximum(q, 1e-38))), tl.where(gamma == 0.0, 1.0, 0.0))
    p_y = tl.exp(-ce)
    ce_over_q = tl.where(q > 0.0, ce / tl.maximum(q, 1e-38), 1.0)
    if HAS_ALPHA:
        alpha_y = tl.load(alpha_ptr + y_safe).to(ACC_DTYPE)
    else:
        alpha_y = 1.0
    loss = alpha_y * q_pow * ce
    nan = float("nan")
    loss = tl.where(is_ignored, 0.0, tl.where(in_range, loss, nan))
    tl.store(loss_ptr + i_row, loss)

    if COMPUTE_GRAD:
        coef = alpha_y * q_pow * (1.0 + gamma * p_y * ce_over_q)
        if REDUCTION == 2:
            n_valid = tl.load(n_valid_ptr).to(ACC_DTYPE)
            coef = coef / tl.maximum(n_valid, 1.0)
        coef = tl.where(is_ignored, 0.0, tl.where(in_range, coef, nan))
        # Pass 2: gradient chunk by chunk (each chunk is read before it is overwritten when in place).
        for v_start in range(0, n_cols, BLOCK_V):
            o_col = v_start + o_v
            m_col = o_col < n_cols
            b_z = tl.load(p_logits + o_col, mask=m_col, other=0.0).to(ACC_DTYPE)
            b_p = tl.exp(b_z - lse)
            b_grad = coef * tl.where(o_col == y, -q, b_p)
            tl.store(p_grad + o_col, b_grad.to(grad_ptr.dtype.element_ty), mask=m_col)


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """BLOCK_V (the V chunk one program loads at a time) and num_warps for (N, V) logits, on every arch."""
    block_v = min(MAX_BLOCK_V, triton.next_power_of_2(shape[1]))
    return {"BLOCK_V": block_v, "num_warps": 4 if block_v <= 1024 else (8 if block_v <= 2048 else 16),
            "grid": (shape[0],)}


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
) -> FocalRows:
    """Per-row loss (N,) fp32 and, when ``compute_grad``, the gradient (N, V) in logits' dtype, scaled for
    ``reduction`` (mean: by 1/n_valid, ``n_valid`` a device scalar counted here when not given).

    logits (N, V) with unit stride along V; target (N,) int; alpha (V,) or None. ``grad_out`` may be
    ``logits`` itself (in place) or any (N, V) buffer; default a new one.
    """
    n_rows, n_cols = logits.shape
    assert logits.stride(1) == 1 and target.shape == (n_rows,)
    acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty(n_rows, dtype=acc_dtype, device=logits.device)
    if compute_grad and grad_out is None:
        grad_out = torch.empty_like(logits)
    if reduction == "mean" and n_valid is None:
        n_valid = (target != ignore_index).sum()
    if n_rows == 0:
        return FocalRows(loss, grad_out)
    config = config_for((n_rows, n_cols), logits.dtype)
    block_v, num_warps = config["BLOCK_V"], config["num_warps"]
    _focal_loss_kernel[config["grid"]](
        logits_ptr=logits, stride_logits=logits.stride(0),
        grad_ptr=grad_out if compute_grad else logits, stride_grad=grad_out.stride(0) if compute_grad else 0,
        target_ptr=target, alpha_ptr=alpha if alpha is not None else loss,
        loss_ptr=loss, n_valid_ptr=n_valid if n_valid is not None else target,
        n_cols=n_cols, gamma=float(gamma), ignore_index=int(ignore_index),
        HAS_ALPHA=alpha is not None, REDUCTION=REDUCTION_CODES[reduction], COMPUTE_GRAD=compute_grad,
        ACC_DTYPE=tl.float64 if acc_dtype == torch.float64 else tl.float32, BLOCK_V=block_v, num_warps=num_warps,
    )
    return FocalRows(loss, grad_out)
