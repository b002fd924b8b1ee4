"""The PyTorch path of the focal loss (CPU, MPS, and anywhere Triton cannot run): the same loss, (lse, ce)
statistics and gradients as the Triton kernels, chunked over rows so that its temporaries stay under ~2 x ``CHUNK_ELEMENTS``
values whatever N is. Math in float32 (float64 for float64 input); no host sync, no op MPS lacks.
"""
from __future__ import annotations

import torch

from retailsim.ops.focal_loss.contract import FocalRows

CHUNK_ELEMENTS = 1 << 23  # logits values one chunk of rows holds in the compute dtype (32 MiB at fp32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """{"rows": rows per chunk} for (N, V) logits; the same on every device."""
    return {"rows": max(1, CHUNK_ELEMENTS // max(1, shape[1]))}


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
    chunk_elements: int | None = None,
) -> FocalRows:
    """The contract of ``contract.py`` (as the Triton launcher): per-row loss (N,) in the
    compute dtype (or ``loss_dtype``), the per-row (lse, ce) when ``save_stats`` and, when ``compute_grad``,
    the reduction-scaled gradient (N, V) in logits' dtype, written into ``grad_out`` (which may be
    ``logits``) or a new buffer."""
    n_rows, n_cols = logits.shape
    dtype = compute_dtype(logits.dtype)
    loss = torch.empty(n_rows, dtype=loss_dtype or dtype, device=logits.device)
    stats = torch.empty((n_rows, 2), dtype=dtype, device=logits.device) if save_stats else None
    if compute_grad and grad_out is None:
        grad_out = torch.empty_like(logits)
    if compute_grad and reduction == "mean":
        if n_valid is None:
            n_valid = (target != ignore_index).sum()
        inv_count = 1.0 / n_valid.clamp(min=1).to(dtype)
    alpha_c = None if alpha is None else alpha.to(dtype)
    step = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(n_cols, 1))
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        z = logits[rows].to(dtype)  # (R, V)
        ignored, in_range, y_safe = _targets(target[rows], ignore_index, n_cols)
        row_max, argmax = z.max(dim=1, keepdim=True)  # (R, 1)
        # rest = sum of exp(z - max) without the argmax's own 1, so log1p keeps its digits as p_y -> 1.
        exps = torch.sub(z, row_max).exp_().scatter_(1, argmax, 0.0)  # (R, V)
        log_sum = torch.log1p(exps.sum(dim=1, keepdim=True))  # (R, 1)
        ce = ((row_max - z.gather(1, y_safe)) + log_sum).clamp(min=0)  # (R, 1)
        q = -torch.expm1(-ce)  # 1 - p_y
        q_pow = q**gamma  # torch: 0**0 = 1, 0**g = 0 for g > 0
        weight = torch.ones_like(ce) if alpha_c is None else alpha_c[y_safe]
        nan = torch.full_like(ce, float("nan"))
        invalid = (~in_range & ~ignored)[:, None]
        keep = (~ignored)[:, None]
        row_loss = torch.where(invalid, nan, weight * q_pow * ce * keep)
        loss[rows] = row_loss.squeeze(1)
        if save_stats:
            stats[rows, 0] = (row_max + log_sum).squeeze(1)
            stats[rows, 1] = ce.squeeze(1)
        if not compute_grad:
            continue
        coef = _coefficient(ce, q, q_pow, weight, gamma) * keep
        if reduction == "mean":
            coef = coef * inv_count
        coef = torch.where(invalid, nan, coef)
        probs = torch.sub(z, row_max + log_sum, out=exps).exp_().scatter_(1, y_safe, -q)  # p_j; p_y - 1 = -q
        grad_out[rows] = probs.mul_(coef)  # the copy casts to grad_out's dtype
    return FocalRows(loss, grad_out, stats)


def _targets(y: torch.Tensor, ignore_index: int, n_cols: int):
    """(ignored (R,), in range (R,), the class index to read, 0 where out of range (R, 1)) of a chunk's targets."""
    y = y.long()
    in_range = (y >= 0) & (y < n_cols)
    return y == ignore_index, in_range, torch.where(in_range, y, torch.zeros_like(y))[:, None]


def _coefficient(ce, q, q_pow, weight, gamma):
    # dFL/dz_j = alpha q^g [1 + g p_y ce/q] (p_j - d_jy), derived in triton.py's kernel header.
    ce_over_q = torch.where(q > 0, ce / q.clamp(min=torch.finfo(ce.dtype).tiny), torch.ones_like(q))
    return weight * q_pow * (1.0 + gamma * torch.exp(-ce) * ce_over_q)


def reduce(*, loss_rows: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
           out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum or mean of the per-row losses in ``out_dtype``, the int64 count of rows that count)."""
    n_valid = (target != ignore_index).sum()
    total = loss_rows.sum()
    if reduction == "mean":
        total = total / n_valid.clamp(min=1)
    return total.to(out_dtype), n_valid


def backward(*, logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None, gamma: float,
             ignore_index: int, reduction: str, stats: torch.Tensor, grad_loss: torch.Tensor,
             n_valid: torch.Tensor | None, grad_out: torch.Tensor | None = None,
             chunk_elements: int | None = None) -> torch.Tensor:
    """The contract of ``contract.py``: the gradient from the forward's (lse, ce), times grad_loss (and
    1 / n_valid for the mean), chunked over rows like ``forward``."""
    n_rows, n_cols = logits.shape
    dtype = compute_dtype(logits.dtype)
    grad_out = torch.empty_like(logits) if grad_out is None else grad_out
    scale = grad_loss.to(dtype)
    if reduction == "mean":
        scale = scale / n_valid.clamp(min=1).to(dtype)
    alpha_c = None if alpha is None else alpha.to(dtype)
    step = max(1, (chunk_elements or CHUNK_ELEMENTS) // max(n_cols, 1))
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        ignored, in_range, y_safe = _targets(target[rows], ignore_index, n_cols)
        lse, ce = stats[rows, 0:1], stats[rows, 1:2]
        q = -torch.expm1(-ce)
        weight = torch.ones_like(ce) if alpha_c is None else alpha_c[y_safe]
        coef = _coefficient(ce, q, q**gamma, weight, gamma) * (scale[rows, None] if scale.dim() else scale)
        coef = torch.where(ignored[:, None], torch.zeros_like(coef), coef)
        coef = torch.where((~in_range & ~ignored)[:, None], torch.full_like(coef, float("nan")), coef)
        probs = torch.sub(logits[rows].to(dtype), lse).exp_().scatter_(1, y_safe, -q)
        grad_out[rows] = probs.mul_(coef)
    return grad_out
