"""The Evaluator (SPEC 5): model, baselines and oracle on the same evaluation masks of one split.

Batches come from ``make_loader(..., train=False, shuffle=False, bucket=False, seed)``: 15% of each basket's items
(at least one) replaced by MASK, chosen by the counter-based RNG at the fixed evaluation epoch, so every evaluation
of a checkpoint (and every baseline) sees the same masks; ``max_batches`` takes the first batches in split order.
Score rows are built a few baskets at a time (at most ``chunk_rows`` tokens), so memory stays O(chunk_rows * V);
by default on CPU as many rows as keep a float32 [rows, V] tile near 4 MiB (``default_chunk_rows``), since every grid
point of the blend search passes over those tiles several times: at 56,785 products 16-18 rows instead of
1,024 made a 3-batch evaluation 1.2-1.7x faster (runs beside a CI run), at 5,003 products 209 rows were no
slower (the results never depend on it).
Buckets: the basket's prior-basket bucket (schema.PRIOR_BUCKETS), repeat (the target is in the customer's
history window, ``Batch.history_items``) vs explore, and, when the cache holds a promotion plan, promoted (the
target is in the plan of the basket's week and store) vs not promoted.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from retailsim.data import schema
from retailsim.errors import RetailSimInputError
from retailsim.data.batching import DEFAULT_MAX_HISTORY, Batch
from retailsim.data.loader import make_loader
from retailsim.data.promotions import DEFAULT_MAX_PROMOTIONS
from retailsim.eval import baselines as bl
from retailsim.eval.metrics import score_tokens, summarize, allowed_candidates
from retailsim.eval.oracle import Oracle, oracle_metrics

BUCKETS = (*schema.PRIOR_BUCKETS, "repeat", "explore")
PLAN_BUCKETS = ("promoted", "not_promoted")  # only with a promotion plan in the cache
AUX_METRICS = {"basket_size": "acc_basket_size", "basket_price_band": "acc_price_band",
               "basket_type": "acc_basket_type", "basket_mission": "acc_mission"}


class _Results:
    """Per-token rank / joint_rank / loglik lists of one scorer."""

    def __init__(self) -> None:
        self.parts = {"rank": [], "joint_rank": [], "loglik": []}

    def add(self, scored: dict[str, torch.Tensor]) -> None:
        for name, values in scored.items():
            self.parts[name].append(values.detach().cpu())

    def summary(self, subset: torch.Tensor | None = None) -> dict:
        cat = {name: torch.cat(v) if v else torch.zeros(0) for name, v in self.parts.items()}
        if subset is not None:
            cat = {name: v[subset] for name, v in cat.items()}
        return summarize(cat["rank"], cat["joint_rank"], cat["loglik"])


def masked_tokens(batch: Batch, n_products: int) -> tuple[dict[str, torch.Tensor], int]:
    """The batch's non-UNK masked tokens (ordered by basket row) and the number of UNK targets left out."""
    rows, cols = batch.masked_positions.nonzero(as_tuple=True)  # row-major: a basket's tokens are contiguous
    targets = batch.targets[rows, cols]
    known = targets != schema.unk_id(n_products)
    rows, cols, targets = rows[known], cols[known], targets[known]
    visible = torch.where(batch.basket_valid & ~batch.masked_positions, batch.basket_items,
                          torch.zeros_like(batch.basket_items))  # [B, S]: the basket's unmasked items
    in_history = ((batch.history_items[rows] == targets[:, None]) & batch.history_valid[rows]).any(1)
    tokens = {"rows": rows, "cols": cols, "targets": targets, "visible": visible, "repeat": in_history,
              "bucket": batch.bucket[rows], "sample_index": batch.sample_index[rows]}
    return tokens, int((~known).sum())


def basket_chunks(rows: torch.Tensor, max_rows: int) -> list[slice]:
    """Slices of ``rows`` (sorted) that never split a basket, each at most ``max_rows`` long (or one basket)."""
    rows = rows.tolist()
    chunks, start = [], 0
    while start < len(rows):
        end = min(start + max_rows, len(rows))
        while end < len(rows) and rows[end] == rows[end - 1] and end > start + 1:
            end -= 1
        if end < len(rows) and rows[end] == rows[end - 1]:  # a single basket longer than max_rows
            end = start + 1
            while end < len(rows) and rows[end] == rows[start]:
                end += 1
        chunks.append(slice(start, end))
        start = end
    return chunks


TILE_ELEMENTS = 1 << 20   # a [rows, V] float32 tile of about 4 MiB: stays in a CPU's last-level cache
MAX_CHUNK_ROWS = 1024


def default_chunk_rows(n_products: int) -> int:
    """Token rows per score tile: about TILE_ELEMENTS scores, between 1 and MAX_CHUNK_ROWS rows."""
    return max(1, min(MAX_CHUNK_ROWS, TILE_ELEMENTS // max(1, n_products)))


def _tie_ranks(mixed: torch.Tensor, targets: torch.Tensor, before_target: torch.Tensor) -> torch.Tensor:
    """metrics.target_ranks' tie rule for scores [r, V] that are 0 outside the allowed set: a disallowed candidate
    (0) can neither beat nor tie an allowed target (> 0)."""
    target = mixed.gather(1, targets[:, None])  # [r, 1]
    return 1 + (mixed > target).sum(1, dtype=torch.int32) + ((mixed == target) & before_target).sum(1, dtype=torch.int32)


class Evaluator:
    """Evaluates a model (or only the baselines, ``model=None``) on a split of the tensor cache ``cache_dir``."""

    def __init__(self, cache_dir: Path, *, batch_size: int = 256, max_batches: int | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", max_history: int = DEFAULT_MAX_HISTORY,
                 chunk_rows: int | None = None, ground_truth: Path | None = None, show_progress: bool = False,
                 max_promotions: int = DEFAULT_MAX_PROMOTIONS) -> None:
        from retailsim.data.cache_reader import TensorCache

        self.cache_dir, self.batch_size, self.max_batches, self.seed = Path(cache_dir), batch_size, max_batches, seed
        self.device, self.max_history, self.chunk_rows = torch.device(device), max_history, chunk_rows
        self.max_promotions = max_promotions
        self.ground_truth, self.show_progress = ground_truth, show_progress
        cache = TensorCache.open(self.cache_dir)
        self.n_products = cache.n_products
        if self.chunk_rows is None:   # on a GPU the model's tiles want many rows; the cache rule is the CPU's
            self.chunk_rows = default_chunk_rows(self.n_products) if self.device.type == "cpu" else MAX_CHUNK_ROWS
        self.plan = cache.promotion_plan()  # None without a plan
        self.stats = bl.BaselineStatistics.from_cache(self.cache_dir)

    def batches(self, split: str):
        loader = make_loader(self.cache_dir, split, batch_size=self.batch_size, train=False, shuffle=False,
                             bucket=False, seed=self.seed, max_history=self.max_history,
                             max_promotions=self.max_promotions)
        total = len(loader) if self.max_batches is None else min(len(loader), self.max_batches)
        batches = itertools.islice(loader, total)
        if self.show_progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=total, desc=f"evaluate {split}", unit="batch")
        return batches

    def _baseline_probs(self, batch: Batch, tokens: dict) -> dict[str, torch.Tensor]:
        """Per-basket distributions [B, V] of the three base baselines."""
        n = len(batch)
        return {"popularity": self.stats.popularity_probs(n),
                "personal": self.stats.personal_probs(batch.history_items, batch.history_valid),
                "cooccurrence": self.stats.cooccurrence_probs(tokens["visible"])}

    def _plan_rows(self, batch: Batch) -> torch.Tensor:
        """bool [B, V]: the products promoted to each basket (its week and store)."""
        return self.plan.rows(batch.time[:, 0].numpy(), batch.store[:, 0].numpy())

    def _tuning_chunks(self, split: str, with_plan: bool = False):
        """What the grid searches score, chunk by chunk of ``split``'s basket rows: (the batch's baseline
        distributions [B, V], its plan rows [B, V] or None, rows, targets, allowed [r, V], before_target [r, V])."""
        for batch in self.batches(split):
            tokens, _ = masked_tokens(batch, self.n_products)
            probs = self._baseline_probs(batch, tokens)
            plan = self._plan_rows(batch) if with_plan else None
            for part in basket_chunks(tokens["rows"], self.chunk_rows):
                rows, targets = tokens["rows"][part], tokens["targets"][part]
                allowed = allowed_candidates(self.n_products, tokens["visible"][rows])
                before_target = torch.arange(allowed.shape[1])[None, :] < targets[:, None]  # [r, V]
                yield probs, plan, rows, targets, allowed, before_target

    def tune_promotion_weight(self, weights: tuple[float, float, float],
                              split: str = "validation") -> tuple[float, float]:
        """The weight of bl.PROMOTION_WEIGHTS maximising the promotion_blend's MRR on ``split`` (with the blend's
        weights) and that MRR."""
        reciprocal = [[] for _ in bl.PROMOTION_WEIGHTS]   # per-token 1/rank, summed once: the same whatever the chunks
        n_tokens = 0
        for probs, plan, rows, targets, allowed, before_target in self._tuning_chunks(split, with_plan=True):
            blend = bl.blend_probs(weights, probs["popularity"][rows], probs["personal"][rows],
                                   probs["cooccurrence"][rows])
            for g, weight in enumerate(bl.PROMOTION_WEIGHTS):
                mixed = bl.promotion_probs(blend, probs["popularity"][rows], plan[rows], weight) * allowed
                reciprocal[g].append(1.0 / _tie_ranks(mixed, targets, before_target).double())
            n_tokens += len(targets)
        if n_tokens == 0:
            return bl.PROMOTION_WEIGHTS[0], 0.0
        totals = torch.stack([torch.cat(parts).sum() for parts in reciprocal])
        best = int(torch.argmax(totals))  # first maximum: weight 0 (the blend) wins a tie
        return bl.PROMOTION_WEIGHTS[best], float(totals[best] / n_tokens)

    def tune_blend(self, split: str = "validation") -> tuple[tuple[float, float, float], float]:
        """Blend weights maximising MRR on ``split`` (validation: never the evaluated split) and that MRR."""
        grid = bl.blend_grid()
        reciprocal = torch.zeros(len(grid), dtype=torch.float64)
        n_tokens = 0
        for probs, _, rows, targets, allowed, before_target in self._tuning_chunks(split):
            # zero outside the allowed set; every mixture is > 0 on it (popularity or its tie-break share)
            chunk = {name: p[rows] * allowed for name, p in probs.items()}
            mixed = torch.empty_like(chunk["popularity"])
            for g, (w_pop, w_personal, w_cooc) in enumerate(grid):
                torch.mul(chunk["popularity"], w_pop, out=mixed)
                mixed.add_(chunk["personal"], alpha=w_personal).add_(chunk["cooccurrence"], alpha=w_cooc)
                reciprocal[g] += (1.0 / _tie_ranks(mixed, targets, before_target).double()).sum()
            n_tokens += len(targets)
        if n_tokens == 0:
            return (1.0, 0.0, 0.0), 0.0
        best = int(torch.argmax(reciprocal))  # first maximum: the grid order is the tie rule
        return grid[best], float(reciprocal[best] / n_tokens)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None, split: str, *,
                 blend_weights: tuple[float, float, float] | None = None,
                 promotion_weight: float | None = None) -> dict:
        """The SPEC 5 result dictionary (without "checkpoint")."""
        from retailsim.data.cache_reader import TensorCache

        if TensorCache.open(self.cache_dir).n_baskets(split) == 0:
            raise RetailSimInputError(f"--data {self.cache_dir}: the {split} split has no baskets; nothing to "
                                      f"evaluate (choose another --split or --split-weeks in prepare-samples).")
        if blend_weights is None:
            blend_weights, validation_mrr = self.tune_blend("validation")
        else:
            validation_mrr = None
        if model is not None:
            model.eval()
        baselines = list(bl.BASELINES) + ([bl.PROMOTION_BASELINE] if self.plan is not None else [])
        promotion_mrr = None
        if self.plan is not None and promotion_weight is None:
            promotion_weight, promotion_mrr = self.tune_promotion_weight(blend_weights)
        scorers = (["model"] if model is not None else []) + baselines
        results = {name: _Results() for name in scorers}
        repeat, bucket, sample_index, targets_all, promoted = [], [], [], [], []
        aux_correct = {name: [0, 0] for name in AUX_METRICS}
        majority_correct = {name: [0, 0] for name in AUX_METRICS}
        n_unk = 0
        for batch in self.batches(split):
            tokens, unk = masked_tokens(batch, self.n_products)
            n_unk += unk
            repeat.append(tokens["repeat"])
            bucket.append(tokens["bucket"])
            sample_index.append(tokens["sample_index"])
            targets_all.append(tokens["targets"])
            plan_rows = self._plan_rows(batch) if self.plan is not None else None
            if plan_rows is not None:
                promoted.append(plan_rows[tokens["rows"], tokens["targets"]])
            self._majority(batch, majority_correct)
            probs = self._baseline_probs(batch, tokens)
            probs["blend"] = bl.blend_probs(blend_weights, probs["popularity"], probs["personal"], probs["cooccurrence"])
            if self.plan is not None:
                probs[bl.PROMOTION_BASELINE] = bl.promotion_probs(probs["blend"], probs["popularity"], plan_rows,
                                                                  promotion_weight)
            output = None
            if model is not None:
                on_device = batch.to(self.device)
                output = model(on_device)
                self._aux(output, batch, aux_correct)
            for part in basket_chunks(tokens["rows"], self.chunk_rows):
                rows, targets = tokens["rows"][part], tokens["targets"][part]
                allowed = allowed_candidates(self.n_products, tokens["visible"][rows])
                for name in baselines:
                    results[name].add(score_tokens(bl.log_scores(probs[name][rows]), allowed, targets, rows))
                if output is not None:
                    logits = model.slot_scores(output, on_device, rows.to(self.device),
                                               tokens["cols"][part].to(self.device))  # [r, V] on the model's device
                    if not bool(torch.isfinite(logits.masked_fill(~allowed.to(logits.device), 0.0)).all()):
                        # a NaN ranks first under every comparison: it would score as a perfect model
                        raise RetailSimInputError(
                            "the model's scores hold NaN or Inf on this data; its checkpoint cannot be evaluated "
                            "(weights damaged, or training diverged).")
                    results["model"].add(score_tokens(logits, allowed.to(logits.device), targets.to(logits.device),
                                                      rows.to(logits.device)))
        repeat, bucket = torch.cat(repeat), torch.cat(bucket)
        sample_index, targets_all = torch.cat(sample_index).numpy(), torch.cat(targets_all).numpy()

        def acc(tally):
            return tally[0] / tally[1] if tally[1] else None

        main = "model" if model is not None else "blend"
        metrics = results[main].summary() if model is not None else None
        if metrics is not None:
            metrics.update({AUX_METRICS[name]: acc(t) for name, t in aux_correct.items()})
        baseline_metrics = {name: results[name].summary() for name in baselines}
        baseline_metrics["popularity"].update({AUX_METRICS[name]: acc(t) for name, t in majority_correct.items()})
        baseline_metrics["blend"]["weights"] = dict(zip(("popularity", "personal", "cooccurrence"), blend_weights))
        baseline_metrics["blend"]["validation_mrr"] = validation_mrr
        if self.plan is not None:
            baseline_metrics[bl.PROMOTION_BASELINE].update(promotion_weight=promotion_weight,
                                                           validation_mrr=promotion_mrr)
        subsets = {name: bucket == i for i, name in enumerate(schema.PRIOR_BUCKETS)}
        subsets.update({"repeat": repeat, "explore": ~repeat})
        if self.plan is not None:
            on_plan = torch.cat(promoted) if promoted else torch.zeros(0, dtype=torch.bool)
            subsets.update({"promoted": on_plan, "not_promoted": ~on_plan})
        buckets = {name: {"n_tokens": int(mask.sum()),
                          "model": results["model"].summary(mask) if model is not None else None,
                          "blend": results["blend"].summary(mask),
                          **({bl.PROMOTION_BASELINE: results[bl.PROMOTION_BASELINE].summary(mask)}
                             if self.plan is not None else {})} for name, mask in subsets.items()}
        return {"split": split, "n_tokens": int(len(repeat)), "n_unk_targets": n_unk, "metrics": metrics,
                "baselines": baseline_metrics, "oracle": self._oracle(split, sample_index, targets_all),
                "buckets": buckets}

    def _aux(self, output, batch: Batch, aux_correct: dict) -> None:
        """Aux head accuracy over baskets with a known label; the prediction never picks 'unknown' (index 0)."""
        for i, name in enumerate(schema.LABEL_TARGETS):
            if name not in output.aux_logits:
                continue
            labels = batch.labels[:, i]
            known = labels != schema.UNKNOWN_LABEL_ID
            predicted = output.aux_logits[name][:, 1:].argmax(1).cpu() + 1
            aux_correct[name][0] += int((predicted[known] == labels[known]).sum())
            aux_correct[name][1] += int(known.sum())

    def _majority(self, batch: Batch, majority_correct: dict) -> None:
        for i, name in enumerate(schema.LABEL_TARGETS):
            labels = batch.labels[:, i]
            known = labels != schema.UNKNOWN_LABEL_ID
            majority_correct[name][0] += int((labels[known] == self.stats.majority_label[name]).sum())
            majority_correct[name][1] += int(known.sum())

    def _oracle(self, split: str, sample_index: np.ndarray, targets: np.ndarray) -> dict | None:
        if self.ground_truth is None or len(targets) == 0:
            return None
        oracle = Oracle(self.ground_truth, self.cache_dir, split)
        return oracle_metrics(*oracle.lookup(sample_index, targets))
