"""Pure-PyTorch definitions of the softmax focal loss: the float64-capable reference the tests judge every
path against, and the eager peer a user would write (``cross_entropy`` + ``gather``) that the benchmarks time.

FL_i = -alpha[y_i] (1 - p_{i,y_i})^gamma log p_{i,y_i}, p = softmax(logits_i); rows with y_i == ignore_index
contribute 0; ``mean`` divides by the number of non-ignored rows (0 rows -> 0). Imports neither Triton nor the
native extension.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1).to(per_row.dtype)


def focal_loss_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | float | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """The definition, computed in ``logits.dtype`` (pass float64 for the reference), differentiable by
    autograd. logits (..., V), target (...) integer; returns a scalar, or (...) for ``reduction="none"``."""
    logits2d = logits.reshape(-1, logits.shape[-1])  # (N, V)
    target1d = target.reshape(-1)  # (N,)
    valid = target1d != ignore_index  # (N,)
    safe_target = torch.where(valid, target1d, torch.zeros_like(target1d))
    log_p = torch.log_softmax(logits2d, dim=-1).gather(1, safe_target[:, None]).squeeze(1)  # (N,)
    ce = -log_p
    one_minus_p = -torch.expm1(-ce)
    if gamma == 0:
        modulator = torch.ones_like(ce)
    else:
        modulator = one_minus_p.clamp(min=0) ** gamma
    per_row = modulator * ce
    if alpha is not None:
        weight = alpha if isinstance(alpha, (int, float)) else alpha.to(per_row.dtype)[safe_target]
        per_row = per_row * weight
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    out = _reduce(per_row, valid, reduction)
    return out.reshape(target.shape) if reduction == "none" else out


def linear_focal_loss_reference(hidden, weight, target, bias=None, **focal_kwargs) -> torch.Tensor:
    """``focal_loss_reference(hidden @ weight.T + bias, target)``, materialising every logit."""
    return focal_loss_reference(F.linear(hidden, weight, bias), target, **focal_kwargs)


def focal_loss_eager(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """The eager peer of the benchmarks: what a user writes with ``F.cross_entropy`` (fp32 math on low-precision
    input), the per-class alpha gathered, ``1 - p`` from ``exp``. Same semantics as the reference."""
    logits2d = logits.reshape(-1, logits.shape[-1]).float()
    target1d = target.reshape(-1)
    ce = F.cross_entropy(logits2d, target1d, ignore_index=ignore_index, reduction="none")  # (N,)
    per_row = (1 - torch.exp(-ce)) ** gamma * ce
    valid = target1d != ignore_index
    if alpha is not None:
        per_row = per_row * alpha.float().gather(0, torch.where(valid, target1d, 0))
    out = _reduce(per_row, valid, reduction)
    return out.reshape(target.shape) if reduction == "none" else out


def linear_focal_loss_eager(hidden, weight, target, bias=None, **focal_kwargs) -> torch.Tensor:
    """Eager peer of ``linear_focal_loss``: the full (N, V) logits, then ``focal_loss_eager``."""
    return focal_loss_eager(F.linear(hidden, weight, bias), target, **focal_kwargs)
