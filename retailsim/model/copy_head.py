"""The copy head's distribution (a pointer mechanism in the spirit of CopyNet, Gu et al. 2016, and RepeatNet,
Ren et al. 2019), shared by the model and the loss.

A slot's product distribution is one softmax over the catalogue logits and the pointer scores of the customer's
past purchases together, each purchase voting for the product it holds:

    P(p) ∝ exp(logit_p) + Σ_{h : history_h = p} exp(copy_h)

so a product bought five times gets five votes, each weighted by what the model makes of that purchase: the
slot's query against the purchase's key, plus a learned function of the purchase's own features (its age, its
time of year and, with ``copy_count``, the log of how often its product occurs in the window: a weight w there
turns the product's total vote from ``count`` into ``count ** (1 + w)``, so regular purchases can outvote
one-off ones). A customer without history gets the catalogue softmax alone.
"""
from __future__ import annotations

import torch

COPY_PAD_SCORE = -1e4  # pointer score of a padded history position: exp(-1e4 - real score) is 0 in fp32 and bf16


def pointer(output, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(scores [B, S, K], items [B, K], valid [B, K]): every pointer entry of the slots, the copy head's history
    positions then the basket's promoted products (``WorldModelOutput``); None when the model has neither.
    Both vote the same way, so one softmax over the catalogue logits and these scores is the slot's
    distribution."""
    parts = []
    if output.copy_scores is not None:
        parts.append((output.copy_scores, batch.history_items, batch.history_valid))
    if getattr(output, "promotion_scores", None) is not None:
        parts.append((output.promotion_scores, batch.promotion_items, batch.promotion_valid))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat(values, dim=-1) for values in zip(*parts))


def log_window_counts(history_items: torch.Tensor, history_valid: torch.Tensor) -> torch.Tensor:
    """[B, H] float32: log of the number of valid positions of the row holding the same product as position h
    (>= 1 at a valid position; 0 at padding)."""
    same = (history_items[:, :, None] == history_items[:, None, :]) & history_valid[:, None, :]  # [B, H, H]
    counts = same.sum(-1, dtype=torch.int32).clamp_min(1)
    return torch.log(counts.float()) * history_valid


def log_scores(logits: torch.Tensor, copy_scores: torch.Tensor, history_items: torch.Tensor) -> torch.Tensor:
    """[R, V] catalogue logits, [R, H] pointer scores and the rows' history items -> [R, V] unnormalised
    log-scores log(exp(logit_p) + Σ_{h: history_h = p} exp(copy_h)) (gradient-safe where p gets no vote)."""
    top = copy_scores.amax(-1, keepdim=True)                                            # [R, 1]
    votes = torch.zeros_like(logits).scatter_add(1, history_items.long(), torch.exp(copy_scores - top))
    voted = votes > 0
    log_votes = torch.where(voted, torch.log(torch.where(voted, votes, 1.0)) + top, float("-inf"))
    return torch.logaddexp(logits, log_votes)                                           # no vote: the logit


def log_prob_target(target_logit: torch.Tensor, catalogue_lse: torch.Tensor, copy_scores: torch.Tensor,
                    history_items: torch.Tensor, history_valid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[R] log P(target) from the target's logit and the catalogue log-partition [R] (any source: the loss takes
    it from the fused kernel) and the pointer scores [R, H]."""
    hits = (history_items == targets[:, None]) & history_valid
    target_votes = torch.logsumexp(copy_scores.masked_fill(~hits, COPY_PAD_SCORE), dim=-1)
    return (torch.logaddexp(target_logit, target_votes)
            - torch.logaddexp(catalogue_lse, torch.logsumexp(copy_scores, dim=-1)))
