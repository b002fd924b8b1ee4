"""Baselines of SPEC 5, each a probability distribution over the catalogue per basket, from training weeks only.

* popularity: P(p) proportional to (training baskets holding p) + 1 (``vocab/product_train_baskets``, which Stage 1
  counts over the training weeks only; +1 so that the mixture below has full support);
* personal: the share of p among the items of the customer's history window (the same window the model reads),
  mixed with popularity at weight TIE_BREAK (a tiny tie-breaker; a customer without history gets popularity);
* cooccurrence: sum over the basket's visible items v of P(p | v) = count(v, p) / baskets(v), from the top-k
  co-occurrence counts of the training baskets (``retailsim.data.cooccurrence.from_cache``), normalised, mixed with
  popularity at weight TIE_BREAK;
* blend: the mixture w_pop * popularity + w_personal * personal + w_cooc * cooccurrence, the weights chosen on the
  validation split by a grid search over the simplex (step 0.1) maximising MRR (:func:`tune_blend_weights`).
* promotion_blend (only when the cache holds a promotion plan): (1 - w) blend + w promoted popularity, the
  latter the popularity restricted to the products of the basket's week's plan (renormalised); w from
  PROMOTION_WEIGHTS (0 = the blend itself) maximising the validation MRR with the blend's weights. The plan is
  known before the week, so this is the baseline a promotion-aware model has to beat. (Multiplying the whole
  blend's promoted products by a lift instead lost validation MRR at every lift on generated data: it pushes
  promoted products above the customer's own repeat items.)

Scores are log-probabilities (float64): the metrics rank them and renormalise them over the allowed candidates.
The popularity baseline also reports the majority-class accuracy of each auxiliary label (majority of the training
baskets' known labels), next to the model's aux accuracies.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retailsim.data import schema
from retailsim.data.cooccurrence import DEFAULT_TOP_K, from_cache as cooccurrence_from_cache
from retailsim.data.cache_reader import TensorCache

BASELINES = ("popularity", "personal", "cooccurrence", "blend")
PROMOTION_BASELINE = "promotion_blend"
PROMOTION_WEIGHTS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
TIE_BREAK = 1e-3
GRID_STEP = 0.1


@dataclass
class BaselineStatistics:
    """Training-split statistics. popularity [V] float64 (0 at PAD/UNK/MASK, sums to 1);
    cooc_indptr [V+1], cooc_partners [nnz], cooc_weight [nnz] = P(partner | product) (CSR over product ids);
    majority_label {label target: training majority label id (>= 1), 0 when no known label}."""

    n_products: int
    popularity: torch.Tensor
    popularity_counts: np.ndarray
    cooc_indptr: np.ndarray
    cooc_partners: np.ndarray
    cooc_weight: np.ndarray
    majority_label: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return self.n_products + 3

    @classmethod
    def from_cache(cls, folder: Path, *, top_k: int = DEFAULT_TOP_K) -> "BaselineStatistics":
        cache = TensorCache.open(folder)
        n_products = cache.n_products
        counts = cache.product_counts()  # a fresh array: zeroing the specials below is local
        counts[[schema.PAD_ID, schema.unk_id(n_products), schema.mask_id(n_products)]] = 0
        smoothed = np.zeros(len(counts), np.float64)
        smoothed[1:n_products + 1] = counts[1:n_products + 1] + 1.0
        cooc = cooccurrence_from_cache(folder, top_k=top_k)
        row_of = np.repeat(np.arange(len(cooc.indptr) - 1), np.diff(cooc.indptr))
        weight = cooc.counts / np.maximum(cooc.item_baskets[row_of], 1)
        labels = cache.split_arrays("train")["labels"]
        majority = {}
        for i, name in enumerate(schema.LABEL_TARGETS):
            tally = np.bincount(np.asarray(labels[:, i], np.int64), minlength=len(schema.LABELS[name]))
            tally[schema.UNKNOWN_LABEL_ID] = 0
            majority[name] = int(tally.argmax()) if tally.sum() else 0
        return cls(n_products, torch.from_numpy(smoothed / smoothed.sum()), counts, cooc.indptr,
                   cooc.neighbors.astype(np.int64), weight, majority)

    # --- per-basket distributions, float64 [B, V] -----------------------------------------------------------

    def popularity_probs(self, n_rows: int) -> torch.Tensor:
        return self.popularity[None, :].expand(n_rows, -1)

    def personal_probs(self, history_items: torch.Tensor, history_valid: torch.Tensor) -> torch.Tensor:
        """history_items [B, H], history_valid [B, H] -> [B, V]."""
        items = torch.where(history_valid, history_items, torch.zeros_like(history_items)).long().cpu()
        counts = torch.zeros(items.shape[0], self.vocab_size, dtype=torch.float64)
        counts.scatter_add_(1, items, history_valid.cpu().to(torch.float64))
        specials = [schema.PAD_ID, schema.unk_id(self.n_products), schema.mask_id(self.n_products)]
        counts[:, specials] = 0.0
        return self._with_tie_break(counts)

    def cooccurrence_probs(self, visible: torch.Tensor) -> torch.Tensor:
        """visible [B, W] item ids (0 = none) -> [B, V]: sum of P(p | v) over the visible real items v."""
        visible = visible.long().cpu().numpy()
        rows, cols = np.nonzero((visible >= 1) & (visible <= self.n_products))
        items = visible[rows, cols]
        starts, ends = self.cooc_indptr[items], self.cooc_indptr[items + 1]
        lengths = ends - starts
        basket = np.repeat(rows, lengths)
        entry = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        flat = np.bincount(basket * self.vocab_size + self.cooc_partners[entry], weights=self.cooc_weight[entry],
                           minlength=visible.shape[0] * self.vocab_size)
        return self._with_tie_break(torch.from_numpy(flat.reshape(visible.shape[0], self.vocab_size)))

    def _with_tie_break(self, mass: torch.Tensor) -> torch.Tensor:
        total = mass.sum(1, keepdim=True)
        share = torch.where(total > 0, mass / total.clamp_min(1e-300), self.popularity[None, :].expand_as(mass))
        return (1.0 - TIE_BREAK) * share + TIE_BREAK * self.popularity[None, :]


def blend_grid(step: float = GRID_STEP) -> list[tuple[float, float, float]]:
    """(w_popularity, w_personal, w_cooccurrence) on the simplex, in steps of ``step``."""
    n = round(1.0 / step)
    return [(a / n, b / n, (n - a - b) / n) for a, b in itertools.product(range(n + 1), repeat=2) if a + b <= n]


def blend_probs(weights, popularity: torch.Tensor, personal: torch.Tensor, cooccurrence: torch.Tensor) -> torch.Tensor:
    w_pop, w_personal, w_cooc = weights
    return w_pop * popularity + w_personal * personal + w_cooc * cooccurrence


def log_scores(probs: torch.Tensor) -> torch.Tensor:
    """log p (float64) with -inf where p = 0 (special ids)."""
    return torch.log(probs)


def promotion_probs(blend: torch.Tensor, popularity: torch.Tensor, promoted: torch.Tensor,
                    weight: float) -> torch.Tensor:
    """(1 - weight) blend + weight * popularity over ``promoted`` [B, V] (bool: in the plan of the basket's
    week), renormalised; a week without a plan keeps the blend's shape."""
    on_plan = torch.where(promoted, popularity, torch.zeros_like(popularity))
    on_plan = on_plan / on_plan.sum(1, keepdim=True).clamp_min(1e-300)
    return (1.0 - weight) * blend + weight * on_plan
