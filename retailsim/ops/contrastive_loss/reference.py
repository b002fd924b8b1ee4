"""Pure-PyTorch contrastive loss over the full N x M score matrix (SPEC 6.4).

This is the parity reference (pass float64 tensors for a float64 answer) and the "eager" peer of the
benchmarks: it is what a user would write without our kernels, so it computes in the inputs' dtype and keeps
the whole (N, M) matrix, and its gradients come from autograd. Imports neither Triton nor the extension.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def allowed_candidates(
    positive_index: torch.Tensor,
    anchor_group: torch.Tensor,
    candidate_group: torch.Tensor,
    candidate_label: torch.Tensor | None,
    candidate_offset: int = 0,
    num_candidates: int | None = None,
) -> torch.Tensor:
    """(N, M') bool: candidate j (of the slice starting at ``candidate_offset``) enters anchor i's sum.

    j is allowed when it is i's positive, or when it shares neither i's group nor the positive's label.
    Ignored anchors (positive -1) allow nothing.
    """
    num_candidates = candidate_group.shape[0] - candidate_offset if num_candidates is None else num_candidates
    columns = slice(candidate_offset, candidate_offset + num_candidates)
    candidate_ids = torch.arange(candidate_offset, candidate_offset + num_candidates, device=positive_index.device)
    is_positive = candidate_ids[None, :] == positive_index[:, None]                 # (N, M')
    allowed = candidate_group[None, columns] != anchor_group[:, None]               # (N, M')
    if candidate_label is not None:
        positive_label = candidate_label[positive_index.clamp(min=0)]               # (N,)
        allowed &= candidate_label[None, columns] != positive_label[:, None]
    allowed |= is_positive
    allowed &= (positive_index >= 0)[:, None]
    return allowed


def reduce_rows(loss_rows: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """``none``: per anchor (0 where ignored); ``sum``; ``mean`` over non-ignored anchors (none -> 0)."""
    if reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1).to(loss_rows.dtype)


def contrastive_loss_ref(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor,
    anchor_group: torch.Tensor,
    candidate_group: torch.Tensor,
    candidate_label: torch.Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Full-matrix contrastive loss; same arguments and result as ``retailsim.ops.contrastive_loss``."""
    if normalize:
        anchors = F.normalize(anchors, dim=-1)                                       # (N, D)
        candidates = F.normalize(candidates, dim=-1)                                 # (M, D)
    scores = anchors @ candidates.T / temperature                                    # (N, M)
    valid = positive_index >= 0                                                      # (N,)
    allowed = allowed_candidates(positive_index, anchor_group, candidate_group, candidate_label)
    # Ignored rows keep every column so their (discarded) log-sum-exp stays finite and its gradient is 0, not NaN.
    masked = scores.masked_fill(~(allowed | ~valid[:, None]), float("-inf"))         # (N, M)
    log_normaliser = torch.logsumexp(masked, dim=1)                                  # (N,)
    positive_score = scores.gather(1, positive_index.clamp(min=0)[:, None]).squeeze(1)  # (N,)
    loss_rows = torch.where(valid, log_normaliser - positive_score, torch.zeros_like(log_normaliser))
    return reduce_rows(loss_rows, valid, reduction)
