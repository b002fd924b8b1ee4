"""The oracle ceiling on synthetic data (SPEC 3.2, 5): the generator's own rank and probability of each evaluated
masked item, read from ``ground_truth.parquet``.

Join: a Stage 2 sample's row is its row in Stage 1's split Parquet (same order), which holds the source
``basket_id``; the token's product id maps to the source's product code through ``vocab.json`` (``products[i]`` is
id ``i + 1``). A ground-truth row matches on (basket_id, product code). The generator writes rows for the test
weeks only, so another split gets no oracle.

Honest caveats: the oracle's ``rank`` excludes *all* the basket's other items (masked ones included), while the
model and the baselines must also rank the basket's other masked items, so the oracle is slightly optimistic; its
log-likelihood uses ``probability_excluding_basket`` (the slot distribution over products not in the rest of the
basket). The oracle has no joint basket score, so it reports no recall@K.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from retailsim.data.cache_reader import TensorCache
from retailsim.errors import RetailSimInputError, first_line
from retailsim.eval.metrics import K_VALUES

GROUND_TRUTH_FILE = "ground_truth.parquet"


def default_ground_truth(cache_dir: Path) -> Path | None:
    """The generator's ground truth next to the raw data Stage 1 read (cache.json → samples metadata → input)."""
    source = TensorCache.open(cache_dir).source_input
    if not source:
        return None
    path = Path(source) / GROUND_TRUTH_FILE
    return path if path.is_file() else None


class Oracle:
    """Ground-truth ``rank`` and ``probability_excluding_basket`` by (sample row, product id) of one split."""

    def __init__(self, ground_truth: Path, cache_dir: Path, split: str) -> None:
        ground_truth, cache_dir = Path(ground_truth), Path(cache_dir)
        if not ground_truth.is_file():
            raise RetailSimInputError(f"--ground-truth: {ground_truth} does not exist.")
        cache = TensorCache.open(cache_dir)
        samples = cache.samples_folder / f"{split}.parquet" if cache.samples_folder else None
        if samples is None or not samples.is_file():
            raise RetailSimInputError(f"--ground-truth needs the Stage 1 samples the cache was built from, and "
                                      f"{samples or 'the path in cache.json'} does not exist.")
        self.product_codes = ["", *cache.vocab.get("products", [])]  # id -> source product code
        try:
            self.basket_ids = pq.read_table(samples, columns=["basket_id"])["basket_id"].to_pylist()
        except (OSError, ValueError, KeyError) as error:  # pyarrow's errors derive from these
            raise RetailSimInputError(f"--ground-truth needs the Stage 1 samples the cache was built from, and "
                                      f"{samples} cannot be read ({first_line(error)}).") from None
        if len(self.basket_ids) != cache.n_baskets(split):
            raise RetailSimInputError(f"{samples} has {len(self.basket_ids)} baskets but the cache's {split} split "
                                      f"{cache.n_baskets(split)}: it is not the Stage 1 output the cache was built "
                                      f"from.")
        try:
            table = pq.read_table(ground_truth, columns=["basket_id", "product_id", "rank", "probability_excluding_basket"])
        except (OSError, ValueError, KeyError) as error:
            raise RetailSimInputError(f"--ground-truth: {ground_truth} is not a ground_truth.parquet ({error}).") from None
        wanted = set(self.basket_ids)
        self.rows: dict[tuple[str, str], tuple[int, float]] = {}
        for batch in table.to_batches():
            basket, product, rank, prob = (batch.column(i).to_pylist() for i in range(4))
            for key in zip((str(b) for b in basket), product, rank, prob):
                if key[0] in wanted:
                    self.rows[(key[0], key[1])] = (key[2], key[3])

    def lookup(self, sample_index: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found bool [R], rank int64 [R], probability float64 [R]) for tokens (row of the split, product id)."""
        found = np.zeros(len(targets), bool)
        rank = np.zeros(len(targets), np.int64)
        prob = np.zeros(len(targets), np.float64)
        for i, (row, product) in enumerate(zip(sample_index.tolist(), targets.tolist())):
            hit = self.rows.get((str(self.basket_ids[row]), self.product_codes[product]))
            if hit is not None:
                found[i], rank[i], prob[i] = True, hit[0], hit[1]
        return found, rank, prob


def oracle_metrics(found: np.ndarray, rank: np.ndarray, prob: np.ndarray) -> dict | None:
    """hr@K, accuracy, ndcg@10, mrr, loglik over the tokens with a ground-truth row; coverage over all tokens."""
    n = int(found.sum())
    if n == 0:
        return None
    rank, prob = rank[found].astype(np.float64), prob[found]
    assert (rank >= 1).all(), "ground-truth ranks start at 1"
    out = {"accuracy": float((rank <= 1).mean())}
    out.update({f"hr@{k}": float((rank <= k).mean()) for k in K_VALUES})
    out["ndcg@10"] = float(np.where(rank <= 10, 1.0 / np.log2(rank + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / rank).mean())
    out["loglik"] = float(np.log(np.maximum(prob, np.finfo(np.float64).tiny)).mean()) if n else math.nan
    out["n_tokens"] = n
    out["coverage"] = n / len(found)
    return out
