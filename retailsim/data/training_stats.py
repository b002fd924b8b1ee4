"""Stage 1, pass 1: everything derived from data, computed from the training weeks only (SPEC 3.3).

- product vocabulary: the ``n_products`` products in the most training baskets get ids 1..N, most frequent
  first, ties broken by product id (string order); PAD 0, UNK N+1, MASK N+2 (``schema``). When training has
  fewer distinct products than ``n_products``, N is that number (no dead logits);
- per-product median log unit price (median of log(spend/quantity) to within 1e-3, i.e. 0.1 %);
- customer ids 1..C for customers seen in training, in order of first training week then customer id;
- store ids 1..S and store region ids 1..R, from training, in string order; 0 = unknown;
- hierarchy ids (category_1..4) of each vocabulary product; training basket counts (popularity baseline).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from retailsim.data import schema
from retailsim.data.week_lines import WeekLines, encode_week

PRICE_QUANTUM = 1e-3  # log-price bin width of the median
_PRICE_OFFSET = 1 << 30  # keeps quantised log prices positive inside the packed (product, price) key


@dataclass
class TrainingStats:
    n_products: int
    vocab_products: list[str]  # id 1..N -> product id
    vocab_train_baskets: np.ndarray  # int64 [vocab_size]: training baskets holding the product (UNK pooled)
    vocab_log_price_median: np.ndarray  # float32 [vocab_size], NaN where no training price
    vocab_categories: dict[str, list[str]]  # level -> names (id 1.. = names[id-1])
    vocab_category_ids: np.ndarray  # int32 [vocab_size, 4]
    product_vocab_id: dict[str, int]  # every training product -> its id (UNK for the rare ones)
    product_log_price_median: dict[str, float]  # every training product with a price
    customer_ids: dict[str, int]
    store_ids: dict[str, int]
    region_ids: dict[str, int]
    train_rows: int = 0
    train_baskets: int = 0
    extra: dict = field(default_factory=dict)

    def vocab_json(self) -> dict:
        vocab_size = schema.vocab_size(self.n_products)
        median = [None if np.isnan(v) else round(float(v), 6) for v in self.vocab_log_price_median]
        return {
            "n_products": self.n_products,
            "vocab_size": vocab_size,
            "pad_id": schema.PAD_ID,
            "unk_id": schema.unk_id(self.n_products),
            "mask_id": schema.mask_id(self.n_products),
            "products": self.vocab_products,
            "train_baskets": self.vocab_train_baskets.tolist(),
            "log_price_median": median,
            "categories": {
                level: {"names": self.vocab_categories[level], "ids": self.vocab_category_ids[:, i].tolist()}
                for i, level in enumerate(schema.HIERARCHY_COLUMNS)
            },
            "n_customers": len(self.customer_ids),
            "n_stores": len(self.store_ids),
            "store_regions": sorted(self.region_ids, key=self.region_ids.get),
        }


class _PriceHistogram:
    """Counts of (product, quantised log price); merged every few weeks so memory follows distinct prices."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self.sums = np.zeros(0, np.float64)  # sum of the exact log prices in each bin
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per week: keys, counts, sums

    def add(self, product: np.ndarray, log_price: np.ndarray) -> None:
        ok = np.isfinite(log_price)
        quantised = np.clip(np.round(log_price[ok] / PRICE_QUANTUM), -_PRICE_OFFSET + 1, _PRICE_OFFSET - 1)
        keys = (product[ok] << 31) + (quantised.astype(np.int64) + _PRICE_OFFSET)
        unique, inverse = np.unique(keys, return_inverse=True)  # a week holds few distinct (product, price) pairs
        self._pending.append((unique, np.bincount(inverse, minlength=len(unique)),
                              np.bincount(inverse, weights=log_price[ok], minlength=len(unique))))
        if sum(len(p[0]) for p in self._pending) > 1_000_000:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [p[0] for p in self._pending])
        counts = np.concatenate([self.counts] + [p[1] for p in self._pending])
        sums = np.concatenate([self.sums] + [p[2] for p in self._pending])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts).astype(np.int64)
        self.sums = np.bincount(inverse, weights=sums)
        self._pending = []

    def medians(self, n_products: int) -> np.ndarray:
        """float64 [n_products]: each product's median log price, NaN without any.

        The lower median of the log prices quantised to PRICE_QUANTUM, reported as the mean of the exact log
        prices in that bin (so a product sold at one price gets exactly that price).
        """
        self._merge()
        product = self.keys >> 31
        value = self.sums / np.maximum(self.counts, 1)
        total = np.bincount(product, weights=self.counts, minlength=n_products)
        group_start = np.concatenate([[0], np.cumsum(np.bincount(product, minlength=n_products))])[:-1]
        cumulative = np.cumsum(self.counts)
        before_group = np.concatenate([[0], cumulative])[group_start[product]]
        within = cumulative - before_group  # running count inside the product's group
        target = (total[product] + 1) // 2  # lower median rank (1-based)
        is_median = (within >= target) & (within - self.counts < target)
        out = np.full(n_products, np.nan)
        out[product[is_median]] = value[is_median]
        return out


def compute_training_stats(weeks, train_end: int, n_products: int, show_progress: bool = True) -> TrainingStats:
    """Pass 1 over ``weeks``, an iterable of (week, canonical table) in week order; weeks after train_end are
    not read."""
    product_index: dict[str, int] = {}
    product_first_categories: list[tuple] = []
    basket_counts = np.zeros(0, np.int64)
    prices = _PriceHistogram()
    customer_ids: dict[str, int] = {}
    stores: set[str] = set()
    regions: set[str] = set()
    rows = baskets = 0
    bar = tqdm(total=train_end, desc="stage 1 pass 1: training statistics", unit="week", disable=not show_progress)
    for week, table in weeks:
        if week > train_end:
            break
        lines = encode_week(week, table)
        rows += table.num_rows
        baskets += lines.n_baskets
        local_to_global = _global_product_index(lines, product_index, product_first_categories)
        item_global = local_to_global[lines.item_product]
        if len(product_index) > len(basket_counts):
            basket_counts = np.concatenate([basket_counts, np.zeros(len(product_index) - len(basket_counts), np.int64)])
        basket_counts += np.bincount(item_global, minlength=len(basket_counts))
        with np.errstate(divide="ignore", invalid="ignore"):
            prices.add(item_global, np.log(lines.unit_prices()))
        customers = lines.basket_strings("customer_id")
        for customer in sorted({c for c in customers if c is not None} - customer_ids.keys()):
            customer_ids[customer] = len(customer_ids) + 1
        stores.update(s for s in (lines.basket_strings("store_id") or []) if s is not None)
        regions.update(r for r in (lines.basket_strings("store_region") or []) if r is not None)
        bar.update(1)
        if week == train_end:
            break  # not even reading the first validation week
    bar.close()
    return _finish(
        n_products, product_index, product_first_categories, basket_counts, prices.medians(len(product_index)),
        customer_ids, stores, regions, rows, baskets,
    )


def _global_product_index(lines: WeekLines, product_index: dict, first_categories: list) -> np.ndarray:
    """Week-local product code -> index among all training products; records new products' hierarchy."""
    local_to_global = np.empty(len(lines.products), np.int64)
    new_local = []
    for local, product in enumerate(lines.products):
        index = product_index.get(product)
        if index is None:
            index = product_index[product] = len(product_index)
            new_local.append(local)
        local_to_global[local] = index
    if new_local:
        rows = pa.array(lines.product_first_row[new_local])
        columns = [c for c in schema.HIERARCHY_COLUMNS if c in lines.table.column_names]
        values = {c: lines.table.column(c).take(rows).cast(pa.string()).to_pylist() for c in columns}
        for j in range(len(new_local)):
            first_categories.append(tuple(values[c][j] if c in values else None for c in schema.HIERARCHY_COLUMNS))
    return local_to_global


def _finish(n_products, product_index, first_categories, basket_counts, medians, customer_ids, stores, regions,
            rows, baskets) -> TrainingStats:
    names = np.array(list(product_index), dtype=object)
    n_products = max(1, min(n_products, len(names)))  # no logits for ids no training product holds
    # most baskets first; ties by product id (np.lexsort: last key is primary)
    order = np.lexsort((names.astype(str), -basket_counts)) if len(names) else np.zeros(0, np.int64)
    kept = order[:n_products]
    vocab_size = schema.vocab_size(n_products)
    unk = schema.unk_id(n_products)
    product_vocab_id = {str(names[g]): unk for g in order[n_products:]}
    product_vocab_id.update({str(names[g]): i + 1 for i, g in enumerate(kept)})
    vocab_counts = np.zeros(vocab_size, np.int64)
    vocab_counts[1:1 + len(kept)] = basket_counts[kept]
    vocab_counts[unk] = basket_counts[order[n_products:]].sum()
    vocab_median = np.full(vocab_size, np.nan, np.float32)
    vocab_median[1:1 + len(kept)] = medians[kept]
    level_names = {}
    category_ids = np.zeros((vocab_size, 4), np.int32)
    for level_index, level in enumerate(schema.HIERARCHY_COLUMNS):
        values = [first_categories[g][level_index] for g in kept]
        level_names[level] = sorted({v for v in values if v is not None})
        lookup = {name: i + 1 for i, name in enumerate(level_names[level])}
        category_ids[1:1 + len(kept), level_index] = [lookup.get(v, 0) for v in values]
    return TrainingStats(
        n_products=n_products,
        vocab_products=[str(names[g]) for g in kept],
        vocab_train_baskets=vocab_counts,
        vocab_log_price_median=vocab_median,
        vocab_categories=level_names,
        vocab_category_ids=category_ids,
        product_vocab_id=product_vocab_id,
        product_log_price_median={str(names[g]): float(medians[g]) for g in range(len(names)) if np.isfinite(medians[g])},
        customer_ids=customer_ids,
        store_ids={s: i + 1 for i, s in enumerate(sorted(stores))},
        region_ids={r: i + 1 for i, r in enumerate(sorted(regions))},
        train_rows=rows,
        train_baskets=baskets,
    )
