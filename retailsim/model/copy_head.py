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

The week's promotions act inside the catalogue part (``promotion_shift``, ``lifted_logits``): a promoted product's
logit rises by its learned lift and every catalogue logit moves by the same shift, so that the catalogue part
keeps its total mass. Promoted products take a larger share of what the catalogue holds, from the products
that are not promoted, while the share of the past purchases' votes stays what it was: the form of the
generator's promotions, which reallocate an explore slot's choice and leave its habit and complement parts
alone (data/synthetic/shopping.py, market.py).
"""
from __future__ import annotations

import torch

COPY_PAD_SCORE = -1e4  # pointer score of a padded history position: exp(-1e4 - real score) is 0 in fp32 and bf16


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


def promotion_shift(catalogue_lse: torch.Tensor, promotion_logits: torch.Tensor, lift: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """[R] log Z - log Z': the shift of every catalogue logit that keeps the catalogue's mass Z = exp(lse) when
    the promoted products' logits ([R, P], their rows' catalogue logits) rise by ``lift`` [R, P] (``valid``: real
    entries; a product appears once per row). Z' = Z - Σ exp(logit) + Σ exp(logit + lift) over the promoted
    products, computed from their share of Z (a share of 1 - 1e-6 at most: finite when they hold it all)."""
    pad = torch.full_like(promotion_logits, COPY_PAD_SCORE)
    share = torch.exp(torch.where(valid, promotion_logits - catalogue_lse[:, None], pad)).sum(-1)
    rest = catalogue_lse + torch.log1p(-share.clamp(max=1.0 - 1e-6))
    lifted = torch.logsumexp(torch.where(valid, promotion_logits + lift, pad), dim=-1)
    return catalogue_lse - torch.logaddexp(rest, lifted)


def lifted_logits(logits: torch.Tensor, lift: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[R, V] catalogue logits with the rows' promoted products ([R, P] ids, 0 at padding) lifted by ``lift`` and
    every logit shifted so that the catalogue keeps its mass (``promotion_shift``)."""
    lse = torch.logsumexp(logits, dim=-1)
    shift = promotion_shift(lse, logits.gather(1, items.long()), lift, valid)
    return logits.scatter_add(1, items.long(), torch.where(valid, lift, torch.zeros_like(lift))) + shift[:, None]


def target_lift(lift: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[R] the lift of each row's target (0 when it is not promoted)."""
    return torch.where((items == targets[:, None]) & valid, lift, torch.zeros_like(lift)).sum(-1)
