"""Ranking metrics over masked tokens (SPEC 5): full-catalogue ranks with the allowed candidates only.

Candidates: every real product id 1..N, except the visible items of the token's basket (its unmasked items;
the basket's other *masked* items stay candidates, as the model cannot see them). PAD, UNK and MASK are never
candidates; UNK targets are left out by the caller and counted.

Tie rule (deterministic): candidates are ordered by (score descending, product id ascending), so
``rank = 1 + #{allowed c : s_c > s_y} + #{allowed c < y : s_c == s_y}``. A constant scorer therefore ranks by id
and earns nothing from ties.

Per token: ``rank`` (from its own score row), ``joint_rank`` (from its basket's joint score: the mean of the
log-probability rows of the basket's masked tokens) and ``loglik`` (log softmax of the score row over the allowed
candidates, at the target). Aggregates, token-weighted: accuracy = hr@1 = P(rank = 1), hr@K = P(rank <= K),
recall@K = P(joint_rank <= K) (a basket's share of masked items found in its joint top-K, weighted by its masked
items), ndcg@10 = mean of 1/log2(1 + rank) for rank <= 10 (one relevant item per token), mrr = mean 1/rank (no
cut-off), loglik = mean log probability.
"""
from __future__ import annotations

import math

import torch

K_VALUES = (1, 5, 10, 20)
RANK_METRICS = ("accuracy", *(f"hr@{k}" for k in K_VALUES), *(f"recall@{k}" for k in K_VALUES), "ndcg@10", "mrr",
                "loglik")


def allowed_candidates(n_products: int, visible: torch.Tensor) -> torch.Tensor:
    """bool [R, V]: True at the real products 1..N not among ``visible`` [R, W] (0 = no item) of the row."""
    rows = visible.shape[0]
    allowed = torch.zeros(rows, n_products + 3, dtype=torch.bool, device=visible.device)
    allowed[:, 1:n_products + 1] = True
    if visible.numel():
        allowed.scatter_(1, visible.long(), False)
    return allowed


def target_ranks(scores: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """int64 [R]: 1-based rank of ``targets`` [R] among the allowed candidates of ``scores`` [R, V] (tie rule above)."""
    return _ranks(scores.masked_fill(~allowed, -math.inf), allowed, targets)


def _ranks(masked: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """target_ranks of scores already set to -inf outside ``allowed`` (the target's own score is finite)."""
    assert bool(allowed.gather(1, targets[:, None]).all()), "a target is not an allowed candidate"
    target_score = masked.gather(1, targets[:, None])  # [R, 1]
    ids = torch.arange(masked.shape[1], device=masked.device)
    # a tie is with a finite score, hence an allowed candidate
    tied_before = ((masked == target_score) & (ids[None, :] < targets[:, None])).sum(1, dtype=torch.int32)
    return 1 + (masked > target_score).sum(1, dtype=torch.int32) + tied_before


def score_tokens(scores: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor,
                 basket_of: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token ``rank``, ``joint_rank``, ``loglik`` for one chunk of score rows.

    scores [R, V] (logits or log-probabilities), allowed [R, V] bool, targets [R] int64, basket_of [R] int64
    (rows of the same basket share an id and an allowed set; all of a basket's masked tokens must be in the chunk).
    """
    scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    masked = scores.masked_fill(~allowed, -math.inf)  # [R, V]
    log_probs = torch.log_softmax(masked, dim=1)  # [R, V]
    loglik = log_probs.gather(1, targets[:, None]).squeeze(1)
    rank = _ranks(masked, allowed, targets)
    joint_rank = rank.clone()  # a basket with one masked token: its joint score is its own row
    _, group = torch.unique(basket_of, return_inverse=True)
    shared = torch.bincount(group)[group] > 1  # rows of baskets with several masked tokens
    if bool(shared.any()):
        _, sub_group = torch.unique(basket_of[shared], return_inverse=True)
        n_groups = int(sub_group.max()) + 1
        finite = log_probs[shared].masked_fill(~allowed[shared], 0.0)  # -inf would give nan in the sums
        joint = torch.zeros(n_groups, scores.shape[1], dtype=finite.dtype, device=scores.device)
        joint.index_add_(0, sub_group, finite)
        joint = joint[sub_group].masked_fill(~allowed[shared], -math.inf)  # the sum: the mean times a positive count, same order
        joint_rank[shared] = _ranks(joint, allowed[shared], targets[shared])
    return {"rank": rank, "joint_rank": joint_rank, "loglik": loglik}


def summarize(rank: torch.Tensor, joint_rank: torch.Tensor, loglik: torch.Tensor) -> dict[str, float | None]:
    """Token-weighted RANK_METRICS of per-token results (None for every metric when there are no tokens)."""
    if len(rank) == 0:
        return {name: None for name in RANK_METRICS}
    rank, joint_rank = rank.double(), joint_rank.double()
    out = {"accuracy": float((rank <= 1).double().mean())}
    out.update({f"hr@{k}": float((rank <= k).double().mean()) for k in K_VALUES})
    out.update({f"recall@{k}": float((joint_rank <= k).double().mean()) for k in K_VALUES})
    out["ndcg@10"] = float(torch.where(rank <= 10, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank)).mean())
    out["mrr"] = float((1.0 / rank).mean())
    out["loglik"] = float(loglik.double().mean())
    return out
