"""Batch assembly (SPEC 3.5, 3.6, 8): the ``Batch`` the model reads, built from the Stage 2 arrays.

``collate(arrays, sample_indices, ...)`` runs in two parts:
  * the per-item part — masked basket, targets, prices, history window — in the native kernel
    ``retailsim._native.collate_items`` or its NumPy twin :func:`collate_items_numpy` (bit-for-bit equal);
  * the per-basket context (T1 statistics, T3 time, T5 store, T6 trip, labels, buckets): a handful of NumPy
    gathers shared by both paths.

Decisions (where SPEC is silent):
  * RNG: counter-based, ``draw(j, stream) = mix64(base ^ (j << 2 | stream))`` with
    ``base = mix64(mix64(mix64(seed) ^ epoch) ^ sample_index)`` and ``mix64`` the splitmix64 finaliser; a
    sample's masks depend on (seed, epoch, sample index, position) only, so not on workers, batch or order.
    Evaluation ignores ``epoch`` and uses ``EVAL_EPOCH`` (2**64 - 1, never a training epoch).
  * Masking: ``n = min(basket length, max_items)`` (Stage 1 already truncated at MAX_BASKET_ITEMS; the collate
    keeps the first ``max_items`` of Stage 1's id order). ``k = max(1, floor(rate * n + 1/2))`` computed exactly
    in integers as ``(rate_bp * n + 5000) // 10000`` with ``rate_bp = round(rate * 10000)``. The k positions
    with the smallest ``(draw(j, 0), j)`` are selected. Training: ``draw(j, 1) % 10`` in 0..7 → MASK, 8 → a
    uniformly random real product ``1 + draw(j, 2) % N`` (never PAD/UNK/MASK), 9 → unchanged (BERT "keep": the
    one place a selected position shows its own product and price, by design). Evaluation: all MASK.
  * Prices: MASK and random positions carry zero price features and ``price_hidden = True``; padding is zero.
  * Targets: ``targets[b, j]`` is the true product id (UNK kept; the evaluator leaves UNK out) where
    ``masked_positions`` is True, else -100 (``IGNORE_TARGET``), the cross-entropy ignore index.
  * History: the last ``max_history`` stream items before the basket's week (``history_end_week``, SPEC 3.3),
    left-aligned with padding after (a causal encoder's outputs at real positions never see padding);
    ``weeks_before = basket week - item week >= 1``; anonymous baskets have none. A stream week not before the
    basket's week is rejected as a corrupt (leaking) cache.
  * T1 ``customer_stats`` [B, 4]: log1p(prior baskets), prior mean basket size, log1p(weeks since the most
    recent history item) (0 without history), log1p(items in the history window); plus
    ``history_category_shares`` [B, C]: the window's share of each coarsest-level category (category_4 ids,
    0 = unknown), zeros without history.
Widths are per batch: S = max(1, longest capped basket), H = max(1, longest capped history), so bucketing by
length (retailsim.data.loader) shrinks them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retailsim import native
from retailsim.data import schema
from retailsim.data.promotions import DEFAULT_MAX_PROMOTIONS, PROMOTION_FEATURES, PromotionPlan

IGNORE_TARGET = -100
EVAL_EPOCH = 2**64 - 1
DEFAULT_MAX_HISTORY = 256
DEFAULT_MASK_RATE = 0.15
FINE_TUNE_MASK_RATE = 0.20
PRICE_FEATURES = ("log_price_rel", "promo", "has_price")
CUSTOMER_STATS = ("log1p_prior_baskets", "prior_mean_basket_size", "log1p_weeks_since_history", "log1p_history_items")
TIME_COLUMNS = ("week", "week_of_year", "weekday", "hour")
STORE_COLUMNS = ("store_id", "store_format", "store_region")
TRIP_COLUMNS = ("days_since_previous", "has_previous", "trips_this_week", "store_switch")
_STREAM_SELECT, _STREAM_ACTION, _STREAM_RANDOM = 0, 1, 2


@dataclass
class Batch:
    """One padded batch; B samples, S basket slots, H history slots, C coarse categories (dtypes in brackets).

    basket_items [B, S] int64         input ids after masking (MASK / random / kept), 0 = PAD
    basket_valid [B, S] bool          True at real basket items
    basket_price [B, S, 3] float32    PRICE_FEATURES; zero at padding and wherever price_hidden
    price_hidden [B, S] bool          True at MASK and random-replacement positions
    masked_positions [B, S] bool      positions to predict (selected by masking)
    targets [B, S] int64              true product id at masked_positions, IGNORE_TARGET (-100) elsewhere
    history_items [B, H] int64        the customer's last items before the basket's week, padding after, 0 = PAD
    history_valid [B, H] bool         True at real history items
    history_weeks_before [B, H] int32 basket week - item week (>= 1), 0 at padding
    history_category_shares [B, C] float32  share of each coarsest category in the history window (T1)
    customer [B, 3] int64             customer_id (0 = anonymous/new), customer_segment, customer_price_band (T1)
    customer_stats [B, 4] float32     CUSTOMER_STATS (T1)
    time [B, 4] int64                 TIME_COLUMNS (T3)
    store [B, 3] int64                STORE_COLUMNS (T5)
    trip [B, 4] float32               TRIP_COLUMNS (T6): known before the basket is filled
    labels [B, 4] int64               schema.LABEL_TARGETS ids, 0 = unknown; targets only, never inputs
    bucket [B] int64                  index into schema.PRIOR_BUCKETS
    sample_index [B] int64            row of the sample in its split
    promotion_items [B, P] int64      the products promoted to the basket (its week and store, from the cache's
                                      plan; known before the week), 0 = padding; P = 1 and none valid without a plan
    promotion_features [B, P, 4] float32  promotions.PROMOTION_FEATURES of each (discount, has discount, display,
                                      mailer); zero at padding
    promotion_valid [B, P] bool       True at real promoted products
    """

    basket_items: torch.Tensor
    basket_valid: torch.Tensor
    basket_price: torch.Tensor
    price_hidden: torch.Tensor
    masked_positions: torch.Tensor
    targets: torch.Tensor
    history_items: torch.Tensor
    history_valid: torch.Tensor
    history_weeks_before: torch.Tensor
    history_category_shares: torch.Tensor
    customer: torch.Tensor
    customer_stats: torch.Tensor
    time: torch.Tensor
    store: torch.Tensor
    trip: torch.Tensor
    labels: torch.Tensor
    bucket: torch.Tensor
    sample_index: torch.Tensor
    promotion_items: torch.Tensor
    promotion_features: torch.Tensor
    promotion_valid: torch.Tensor

    def _map(self, fn) -> "Batch":
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.basket_items.shape[0]


@dataclass
class CollateArrays:
    """The Stage 2 arrays one split needs for batching (memory maps are fine: nothing is copied whole)."""

    basket: dict[str, np.ndarray]  # the split's BASKET_ARRAYS, basket_item_offsets, item_ids, item_price
    stream_items: np.ndarray
    stream_weeks: np.ndarray
    product_category: np.ndarray  # int32 [vocab_size]: coarsest hierarchy id per product id
    n_products: int
    n_categories: int
    plan: PromotionPlan | None = None  # the cache's promotion plan, if it has one

    @property
    def n_baskets(self) -> int:
        return len(self.basket["basket_item_offsets"]) - 1

    @classmethod
    def from_cache(cls, folder: Path, split: str) -> "CollateArrays":
        from retailsim.data.cache_reader import TensorCache

        cache = TensorCache.open(folder)
        arrays = cache.split_arrays(split)
        # coarsest level: 0 = unknown, then vocab.json's names (the width is the data set's, not the batch's)
        category = np.ascontiguousarray(cache.product_category()[:, -1], np.int32)
        n_categories = cache.data_sizes()["category_sizes"][-1]
        basket = {name: arrays[name] for name in arrays if name not in
                  ("stream_items", "stream_weeks", "stream_offsets", "product_category", "product_train_baskets",
                   "product_log_price_median", "product_has_price")}
        return cls(basket, arrays["stream_items"], arrays["stream_weeks"], category, cache.n_products, n_categories,
                   cache.promotion_plan())


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_bases(seed: int, epoch: int, sample_indices: np.ndarray) -> np.ndarray:
    """uint64 [B]: the per-sample RNG key mix64(mix64(mix64(seed) ^ epoch) ^ sample)."""
    with np.errstate(over="ignore"):
        head = _mix64(np.array([seed], np.uint64)) ^ np.uint64(epoch)
        return _mix64(_mix64(head) ^ sample_indices.astype(np.uint64))


def _draws(bases: np.ndarray, width: int, stream: int) -> np.ndarray:
    counters = (np.arange(width, dtype=np.uint64) << np.uint64(2)) | np.uint64(stream)
    with np.errstate(over="ignore"):
        return _mix64(bases[:, None] ^ counters[None, :])


def mask_counts(n: np.ndarray, mask_rate_bp: int) -> np.ndarray:
    """Positions to mask per basket: max(1, round-half-up(rate * n)), at most n, 0 for an empty basket."""
    k = np.maximum(1, (mask_rate_bp * n + 5000) // 10000)
    return np.where(n > 0, np.minimum(k, n), 0)


def collate_items_numpy(*, basket_item_offsets, item_ids, item_price, history_start, history_end, basket_week,
                        stream_items, stream_weeks, product_category, sample_indices, seed, epoch, train, mask_rate_bp,
                        n_products, max_items, max_history, n_categories) -> dict[str, np.ndarray]:
    """NumPy twin of ``retailsim._native.collate_items``: same arguments, same arrays, same errors (ValueError)."""
    n_baskets, n_items, n_stream, unk = len(basket_item_offsets) - 1, len(item_ids), len(stream_items), n_products + 1
    if n_baskets < 0:
        raise ValueError("basket_item_offsets must hold n_baskets + 1 entries")
    if item_price.ndim != 2 or item_price.shape != (n_items, 3):
        raise ValueError("item_price must have shape (len(item_ids), 3)")
    if not len(history_start) == len(history_end) == len(basket_week) == n_baskets:
        raise ValueError("history_start, history_end and week need one entry per basket")
    if len(stream_weeks) != n_stream:
        raise ValueError("stream_items and stream_weeks differ in length")
    if n_products < 1:
        raise ValueError("n_products must be at least 1")
    if len(product_category) != n_products + 3:
        raise ValueError("product_category needs one entry per vocabulary id (n_products + 3)")
    if not 1 <= mask_rate_bp <= 10000:
        raise ValueError("mask_rate must be in (0, 1]")
    if max_items < 1 or max_history < 1 or n_categories < 1:
        raise ValueError("max_items, max_history and n_categories must be at least 1")
    bad = np.flatnonzero((product_category < 0) | (product_category >= n_categories))
    if len(bad):
        raise ValueError(f"product_category[{bad[0]}] = {product_category[bad[0]]} is outside 0..{n_categories - 1}")
    samples = np.asarray(sample_indices, np.int64)
    bad = np.flatnonzero((samples < 0) | (samples >= n_baskets))
    if len(bad):
        raise ValueError(f"sample index {samples[bad[0]]} is outside 0..{n_baskets - 1}")
    lo, hi = basket_item_offsets[samples], basket_item_offsets[samples + 1]
    bad = np.flatnonzero((lo < 0) | (hi < lo) | (hi > n_items))
    if len(bad):
        s = samples[bad[0]]
        raise ValueError(f"basket_item_offsets[{s}:{s + 2}] = ({lo[bad[0]]}, {hi[bad[0]]}) is not a slice of item_ids "
                         f"(0..{n_items})")
    hs, he = history_start[samples], history_end[samples]
    bad = np.flatnonzero((hs < 0) | (he < hs) | (he > n_stream))
    if len(bad):
        s = samples[bad[0]]
        raise ValueError(f"history_start/history_end[{s}] = ({hs[bad[0]]}, {he[bad[0]]}) is not a slice of the stream "
                         f"(0..{n_stream})")
    batch = len(samples)
    n = np.minimum(hi - lo, max_items)
    width = max(1, int(n.max(initial=0)))
    slots = np.arange(width)
    valid = slots[None, :] < n[:, None]
    rows = (lo[:, None] + slots[None, :])[valid]
    ids = np.asarray(item_ids[rows], np.int64)
    bad = np.flatnonzero((ids < 1) | (ids > unk))
    if len(bad):
        raise ValueError(f"item_ids[{rows[bad[0]]}] = {ids[bad[0]]} is not a product id 1..{unk}")

    basket_items = np.zeros((batch, width), np.int64)
    basket_items[valid] = ids
    basket_price = np.zeros((batch, width, 3), np.float32)
    basket_price[valid] = item_price[rows]
    bases = sample_bases(seed, epoch, samples)
    select_keys = _draws(bases, width, _STREAM_SELECT)
    order = np.lexsort((np.broadcast_to(slots, (batch, width)), select_keys, ~valid), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(slots, (batch, width)), axis=1)
    masked = valid & (rank < mask_counts(n, mask_rate_bp)[:, None])
    targets = np.where(masked, basket_items, IGNORE_TARGET)
    if train:
        action = _draws(bases, width, _STREAM_ACTION) % np.uint64(10)
        random_ids = (_draws(bases, width, _STREAM_RANDOM) % np.uint64(n_products)).astype(np.int64) + 1
    else:
        action = np.zeros((batch, width), np.uint64)
        random_ids = np.zeros((batch, width), np.int64)
    to_mask, to_random = masked & (action < 8), masked & (action == 8)
    basket_items[to_mask] = n_products + 2
    basket_items[to_random] = random_ids[to_random]
    hidden = to_mask | to_random
    basket_price[hidden] = 0.0

    window_start = np.maximum(hs, he - max_history)
    h = he - window_start
    depth = max(1, int(h.max(initial=0)))
    hslots = np.arange(depth)
    history_valid = hslots[None, :] < h[:, None]
    positions = (window_start[:, None] + hslots[None, :])[history_valid]
    history_ids = np.asarray(stream_items[positions], np.int64)
    bad = np.flatnonzero((history_ids < 1) | (history_ids > unk))
    if len(bad):
        raise ValueError(f"stream_items[{positions[bad[0]]}] = {history_ids[bad[0]]} is not a product id 1..{unk}")
    owner = np.broadcast_to(np.arange(batch)[:, None], (batch, depth))[history_valid]
    item_weeks = np.asarray(stream_weeks[positions])
    before = basket_week[samples][owner].astype(np.int32) - item_weeks.astype(np.int32)
    bad = np.flatnonzero(before < 1)
    if len(bad):
        raise ValueError(f"stream_weeks[{positions[bad[0]]}] = {item_weeks[bad[0]]} is not before the basket's week "
                         f"{basket_week[samples][owner][bad[0]]} (history would leak the basket)")
    history_items = np.zeros((batch, depth), np.int64)
    history_items[history_valid] = history_ids
    weeks_before = np.zeros((batch, depth), np.int32)
    weeks_before[history_valid] = before
    counts = np.bincount(owner * n_categories + product_category[history_ids], minlength=batch * n_categories)
    counts = counts.reshape(batch, n_categories).astype(np.float32)
    shares = np.divide(counts, h[:, None].astype(np.float32), out=np.zeros_like(counts), where=h[:, None] > 0)
    return {
        "basket_items": basket_items, "basket_valid": valid, "basket_price": basket_price, "price_hidden": hidden,
        "masked_positions": masked, "targets": targets, "history_items": history_items,
        "history_valid": history_valid, "history_weeks_before": weeks_before, "history_category_shares": shares,
    }


def _kernel(use_native: bool | None):
    module = native.load() if use_native is not False else None
    if use_native and module is None:
        raise RuntimeError("the native extension was requested but is not available (built? RETAILSIM_NATIVE=0?)")
    return module.collate_items if module is not None else collate_items_numpy


def kernel_arguments(arrays: CollateArrays, sample_indices, *, seed: int, epoch: int, train: bool,
                     mask_rate: float = DEFAULT_MASK_RATE, max_items: int = schema.MAX_BASKET_ITEMS,
                     max_history: int = DEFAULT_MAX_HISTORY) -> dict:
    """Keyword arguments of the collate kernels (native, twin, reference) for these samples; validates the scalars."""
    if not 0.0 < mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}.")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in 0..2**64-1, got {seed!r}.")
    if not (isinstance(epoch, (int, np.integer)) and 0 <= epoch < 2**64):
        raise ValueError(f"epoch must be an integer in 0..2**64-1, got {epoch!r}.")
    b = arrays.basket
    return dict(
        basket_item_offsets=np.ascontiguousarray(b["basket_item_offsets"], np.int64),
        item_ids=np.ascontiguousarray(b["item_ids"], np.int32),
        item_price=np.ascontiguousarray(b["item_price"], np.float32),
        history_start=np.ascontiguousarray(b["history_start"], np.int64),
        history_end=np.ascontiguousarray(b["history_end_week"], np.int64),
        basket_week=np.ascontiguousarray(b["week"], np.int16),
        stream_items=np.ascontiguousarray(arrays.stream_items, np.int32),
        stream_weeks=np.ascontiguousarray(arrays.stream_weeks, np.int16),
        product_category=np.ascontiguousarray(arrays.product_category, np.int32),
        sample_indices=np.ascontiguousarray(sample_indices, np.int64),
        seed=int(seed), epoch=int(EVAL_EPOCH if not train else epoch), train=bool(train),
        mask_rate_bp=int(round(mask_rate * 10000)), n_products=int(arrays.n_products), max_items=int(max_items),
        max_history=int(max_history), n_categories=int(arrays.n_categories),
    )


def collate_items(arrays: CollateArrays, sample_indices, *, seed: int, epoch: int, train: bool,
                  mask_rate: float = DEFAULT_MASK_RATE, max_items: int = schema.MAX_BASKET_ITEMS,
                  max_history: int = DEFAULT_MAX_HISTORY, use_native: bool | None = None) -> dict[str, np.ndarray]:
    """The per-item arrays of a batch (native kernel or NumPy twin; ``use_native=None`` picks native if built)."""
    return _kernel(use_native)(**kernel_arguments(arrays, sample_indices, seed=seed, epoch=epoch, train=train,
                                                  mask_rate=mask_rate, max_items=max_items, max_history=max_history))


def promotion_lists(arrays: CollateArrays, samples: np.ndarray,
                    max_promotions: int = DEFAULT_MAX_PROMOTIONS, read_plan: bool = True) -> dict[str, np.ndarray]:
    """The Batch's promotion_* fields: each basket's promoted products from the plan (its week and store); one
    invalid slot per basket without a plan, or when ``read_plan`` is off (a model that does not read it)."""
    if arrays.plan is None or not read_plan:
        n = len(samples)
        return {"promotion_items": np.zeros((n, 1), np.int64),
                "promotion_features": np.zeros((n, 1, len(PROMOTION_FEATURES)), np.float32),
                "promotion_valid": np.zeros((n, 1), bool)}
    items, features, valid = arrays.plan.padded(np.asarray(arrays.basket["week"][samples]),
                                                np.asarray(arrays.basket["store_id"][samples]), max_promotions)
    return {"promotion_items": items, "promotion_features": features, "promotion_valid": valid}


def context_features(arrays: CollateArrays, samples: np.ndarray, items: dict[str, np.ndarray],
                     max_promotions: int = DEFAULT_MAX_PROMOTIONS, read_plan: bool = True) -> dict[str, np.ndarray]:
    """Per-basket inputs (T1, T3, T5, T6, the promotion lists), labels and buckets: NumPy gathers shared by both
    collate paths."""
    b = arrays.basket
    col = lambda name, dtype: np.asarray(b[name][samples]).astype(dtype)  # noqa: E731
    in_window = items["history_valid"].sum(axis=1)
    last = np.maximum(in_window - 1, 0)
    weeks_since = np.take_along_axis(items["history_weeks_before"], last[:, None], axis=1)[:, 0]
    weeks_since = np.where(in_window > 0, weeks_since, 0)
    return {
        "customer": np.stack([col(n, np.int64) for n in ("customer_id", "customer_segment", "customer_price_band")], 1),
        "customer_stats": np.stack([
            np.log1p(col("prior_baskets", np.float32)), col("prior_mean_basket_size", np.float32),
            np.log1p(weeks_since.astype(np.float32)), np.log1p(in_window.astype(np.float32)),
        ], axis=1),
        "time": np.stack([col(n, np.int64) for n in TIME_COLUMNS], axis=1),
        "store": np.stack([col(n, np.int64) for n in STORE_COLUMNS], axis=1),
        "trip": np.stack([col(n, np.float32) for n in TRIP_COLUMNS], axis=1),
        "labels": col("labels", np.int64).reshape(len(samples), len(schema.LABEL_TARGETS)),
        "bucket": col("bucket", np.int64),
        "sample_index": samples.astype(np.int64),
        **promotion_lists(arrays, samples, max_promotions, read_plan),
    }


def collate(arrays: CollateArrays, sample_indices, *, seed: int = 0, epoch: int = 0, train: bool = True,
            mask_rate: float = DEFAULT_MASK_RATE, max_items: int = schema.MAX_BASKET_ITEMS,
            max_history: int = DEFAULT_MAX_HISTORY, use_native: bool | None = None,
            max_promotions: int = DEFAULT_MAX_PROMOTIONS, read_plan: bool = True) -> Batch:
    """The padded :class:`Batch` of ``sample_indices`` (rows of the split), deterministic in (seed, epoch, row).
    ``read_plan=False`` leaves the promotion lists empty (training a model without ``promotions``).

    Example: ``collate(CollateArrays.from_cache("data/cache", "train"), [0, 5, 9], seed=0, epoch=3)``.
    """
    samples = np.ascontiguousarray(sample_indices, np.int64)
    if samples.ndim != 1:
        raise ValueError(f"sample_indices must be one-dimensional, got shape {samples.shape}.")
    items = collate_items(arrays, samples, seed=seed, epoch=epoch, train=train, mask_rate=mask_rate,
                          max_items=max_items, max_history=max_history, use_native=use_native)
    fields = {**items, **context_features(arrays, samples, items, max_promotions, read_plan)}
    return Batch(**{name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in fields.items()})
