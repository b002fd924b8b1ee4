"""Stage 1 — samples (SPEC 3.3): a TransactionSource → one Parquet file per split, one row per basket.

Pass 1 (``training_stats``) reads the training weeks only; pass 2 reads every week once, in order, and writes
each week as one row group of its split's file. The source itself is parsed once (``week_spill``: pass 2
replays the training weeks from a compressed scratch copy). Memory: one week plus the running aggregates
(vocabulary, id maps, per-customer state).

Output folder:
  train.parquet, validation.parquet, test.parquet   rows = baskets in time order (week, weekday, hour, basket id)
  vocab.json                                        product vocabulary, special ids, hierarchy, popularity
  promotions.parquet                                the source's promotion plan over the vocabulary, if it has one
  metadata.json                                     sizes, split weeks, input fingerprint, counters, columns
See ``SAMPLE_COLUMNS`` for the meaning of every column.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from retailsim.data import promotions, schema
from retailsim.data.customer_state import CustomerState
from retailsim.data.readers.validation import input_error, reading
from retailsim.data.training_stats import PRICE_QUANTUM, TrainingStats, compute_training_stats
from retailsim.data.week_lines import WeekLines, encode_week
from retailsim.data.week_spill import SpilledWeeks
from retailsim.errors import RetailSimInputError

SAMPLES_FORMAT_VERSION = 1
PROMO_DISCOUNT = 0.10  # an item is "on promotion" when its unit price is >= 10 % below its training median
PROMO_LOG_THRESHOLD = math.log(1.0 - PROMO_DISCOUNT)

SAMPLE_COLUMNS = {
    "basket_id": (pa.string(), "the source's basket id; a basket id shared by several customers is one row per "
                               "customer, each with that id (source_counters.baskets_split_by_customer)"),
    "customer_id": (pa.int32(), "training customer id 1..C; 0 = anonymous or first seen after the training weeks"),
    "customer_key": (pa.int32(), "history key: = customer_id for training customers, C+1.. for customers first "
                                 "seen later (in order of first basket), 0 = anonymous"),
    "store_id": (pa.int32(), "training store id 1..S; 0 = unknown or first seen after the training weeks"),
    "store_format": (pa.int8(), "schema.LABELS['store_format'] id"),
    "store_region": (pa.int16(), "training region id 1..R (vocab.json store_regions); 0 = unknown"),
    "customer_segment": (pa.int8(), "schema.LABELS['customer_segment'] id (lifestage)"),
    "customer_price_band": (pa.int8(), "schema.LABELS['customer_price_band'] id"),
    "week": (pa.int16(), "ordinal week, 1-based"),
    "week_of_year": (pa.int8(), "1..52, (week - 1) % 52 + 1 (the ordinal week carries no calendar date)"),
    "weekday": (pa.int8(), "0 = Monday .. 6 = Sunday; 0 when the source has none"),
    "hour": (pa.int8(), "0..23; 0 when the source has none"),
    "basket_size": (pa.int8(), "label id (target only, never an input)"),
    "basket_price_band": (pa.int8(), "label id (target only)"),
    "basket_type": (pa.int8(), "label id (target only)"),
    "basket_mission": (pa.int8(), "label id (target only)"),
    "items": (pa.list_(pa.int32()), "product ids, distinct products of the basket sorted by id (most popular "
                                    "first, UNK last, UNK ties by product id), truncated to MAX_BASKET_ITEMS"),
    "n_items_total": (pa.int32(), "distinct products in the basket before truncation"),
    "item_log_price_rel": (pa.list_(pa.float32()), "log unit price minus the product's training median; 0 when "
                                                    "item_has_price is 0"),
    "item_promo": (pa.list_(pa.int8()), "1 when the unit price is >= PROMO_DISCOUNT below the training median"),
    "item_has_price": (pa.list_(pa.int8()), "1 when spend and quantity are > 0 and the product has a training "
                                            "median price"),
    "prior_baskets": (pa.int32(), "the customer's baskets before this one, all weeks (0 for anonymous)"),
    "prior_mean_basket_size": (pa.float32(), "mean n_items_total of those prior baskets (0 without any)"),
    "has_previous": (pa.int8(), "1 when the customer has an earlier basket"),
    "days_since_previous": (pa.float32(), "days since the customer's previous basket (0 without one)"),
    "trips_this_week": (pa.int16(), "the customer's earlier baskets in the same week"),
    "store_switch": (pa.int8(), "1 when the previous basket was in another store"),
}
SAMPLES_SCHEMA = pa.schema([pa.field(name, kind) for name, (kind, _) in SAMPLE_COLUMNS.items()])
# metadata.json sizes the later stages read, each with the least value it may hold.
METADATA_SIZES = {"n_weeks": 3, "n_products": 1, "vocab_size": 4, "n_customers": 0, "n_customer_keys": 1,
                  "n_stores": 0, "n_store_regions": 0}
CORRUPT_SAMPLES = "; the samples folder is corrupt, rerun prepare-samples"


@dataclass
class SplitCounts:
    rows: int = 0
    baskets: int = 0
    items: int = 0
    truncated_baskets: int = 0
    anonymous_baskets: int = 0
    unk_items: int = 0
    weeks: list = field(default_factory=list)


def resolve_split(n_weeks: int, split_weeks: tuple[int, int] | None) -> tuple[int, int]:
    if split_weeks is None:
        try:
            return schema.split_boundaries(n_weeks)
        except ValueError as error:
            raise RetailSimInputError(f"--input: {error}") from None
    train_end, validation_end = split_weeks
    if not 1 <= train_end < validation_end < n_weeks:
        raise RetailSimInputError(
            f"--split-weeks {train_end},{validation_end}: expected 1 <= TRAIN_END < VAL_END < {n_weeks} "
            f"(the input has weeks 1..{n_weeks})."
        )
    return train_end, validation_end


def write_samples(source, out: Path, *, n_products: int = schema.DEFAULT_N_PRODUCTS,
                  split_weeks: tuple[int, int] | None = None, show_progress: bool = True,
                  extra_metadata: dict | None = None) -> dict:
    """Run Stage 1 from ``source`` into the (existing, empty) folder ``out``; returns metadata.json's content."""
    if n_products < 1:
        raise RetailSimInputError(f"--n-products {n_products}: expected at least 1.")
    started = time.perf_counter()
    n_weeks = int(source.n_weeks())
    if n_weeks > schema.MAX_WEEKS:  # every adapter checks this with the file and value; this guards any source
        raise RetailSimInputError(f"--input spans {n_weeks:,} weeks, more than the {schema.MAX_WEEKS:,} weeks "
                                  f"(about 38 years) one data set may cover.")
    train_end, validation_end = resolve_split(n_weeks, split_weeks)
    weeks = SpilledWeeks(source, train_end, out / ".pass1_weeks")
    writers = {}
    try:
        stats = compute_training_stats(weeks.training_weeks(), train_end, n_products, show_progress)
        if stats.train_baskets == 0:
            raise RetailSimInputError(f"--input has no basket lines in the training weeks 1..{train_end}.")
        counts = {split: SplitCounts() for split in schema.SPLITS}
        writers = {split: pq.ParquetWriter(out / f"{split}.parquet", SAMPLES_SCHEMA) for split in schema.SPLITS}
        week_writer = _WeekWriter(stats)
        bar = tqdm(total=n_weeks, desc="stage 1 pass 2: samples", unit="week", disable=not show_progress)
        for week, table in weeks.all_weeks():
            split = schema.SPLITS[0 if week <= train_end else 1 if week <= validation_end else 2]
            lines = encode_week(week, table)
            source.counters.baskets_split_by_customer += lines.baskets_split_by_customer  # once per week: pass 2
            samples, info = week_writer.week_samples(lines)
            writers[split].write_table(samples)
            c = counts[split]
            c.rows += table.num_rows
            c.baskets += samples.num_rows
            c.weeks.append(week)
            for name, value in info.items():
                setattr(c, name, getattr(c, name) + value)
            bar.update(1)
        bar.close()
    finally:
        for writer in writers.values():
            writer.close()
        weeks.remove()

    (out / "vocab.json").write_text(json.dumps(stats.vocab_json()))
    plan = source.promotion_plan() if hasattr(source, "promotion_plan") else None
    plan_entry = None
    if plan is not None:   # read after the training pass: only the vocabulary is needed, never a transaction
        tables, plan_file = plan
        plan_entry = promotions.write_samples_plan(tables, out / promotions.SAMPLES_PLAN_FILE,
                                                   stats.product_vocab_id, schema.unk_id(stats.n_products),
                                                   stats.store_ids, n_weeks, plan_file)
    metadata = {
        "format": "retailsim-samples",
        "format_version": SAMPLES_FORMAT_VERSION,
        "source": getattr(source, "name", type(source).__name__),
        "input_fingerprint": source.fingerprint(),
        "columns_present": list(source.columns),
        "source_counters": source.counters.as_dict(),
        "seed": None,  # Stage 1 draws no random numbers; every tie is broken by id
        "n_weeks": n_weeks,
        "split_weeks": {"train": [1, train_end], "validation": [train_end + 1, validation_end],
                        "test": [validation_end + 1, n_weeks]},
        "n_products": stats.n_products,
        "n_products_requested": n_products,
        "vocab_size": schema.vocab_size(stats.n_products),
        "n_train_products": len(stats.product_vocab_id),
        "n_customers": len(stats.customer_ids),
        "n_customer_keys": week_writer.n_customer_keys,
        "n_stores": len(stats.store_ids),
        "n_store_regions": len(stats.region_ids),
        "max_basket_items": schema.MAX_BASKET_ITEMS,
        "promo_discount": PROMO_DISCOUNT,
        "price_median_quantum": PRICE_QUANTUM,
        "splits": {split: {k: v for k, v in vars(c).items() if k != "weeks"} | {"n_weeks": len(c.weeks)}
                   for split, c in counts.items()},
        "promotions": plan_entry,
        "seconds": round(time.perf_counter() - started, 2),
        **(extra_metadata or {}),
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata


class _WeekWriter:
    """Turns one encoded week into sample rows, carrying customer keys and per-customer state across weeks."""

    def __init__(self, stats: TrainingStats) -> None:
        self.stats = stats
        self.unk = schema.unk_id(stats.n_products)
        self.new_customer_keys: dict[str, int] = {}
        self.state = CustomerState()

    @property
    def n_customer_keys(self) -> int:
        return 1 + len(self.stats.customer_ids) + len(self.new_customer_keys)

    def _customer_keys(self, customers: list) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros(len(customers), np.int32)
        keys = np.zeros(len(customers), np.int32)
        known, new = self.stats.customer_ids, self.new_customer_keys
        for i, customer in enumerate(customers):
            if customer is None:
                continue
            cid = known.get(customer)
            if cid is not None:
                ids[i] = keys[i] = cid
            else:
                key = new.get(customer)
                if key is None:
                    key = new[customer] = len(known) + len(new) + 1
                keys[i] = key
        return ids, keys

    def week_samples(self, lines: WeekLines) -> tuple[pa.Table, dict]:
        stats, n = self.stats, lines.n_baskets
        local_vocab = np.array([stats.product_vocab_id.get(p, self.unk) for p in lines.products], np.int64)
        local_median = np.array([stats.product_log_price_median.get(p, np.nan) for p in lines.products])
        local_rank = np.empty(len(lines.products), np.int64)
        local_rank[np.argsort(np.array(lines.products, dtype=object).astype(str), kind="stable")] = np.arange(len(lines.products))

        item_vocab = local_vocab[lines.item_product]
        order = np.lexsort((local_rank[lines.item_product], item_vocab, lines.item_basket))
        item_basket = lines.item_basket[order]
        n_items_total = np.bincount(item_basket, minlength=n)
        starts = np.concatenate([[0], np.cumsum(n_items_total)])[:-1]
        keep = order[(np.arange(len(order)) - starts[item_basket]) < schema.MAX_BASKET_ITEMS]
        kept_per_basket = np.minimum(n_items_total, schema.MAX_BASKET_ITEMS)
        offsets = np.concatenate([[0], np.cumsum(kept_per_basket)]).astype(np.int32)

        with np.errstate(divide="ignore", invalid="ignore"):
            log_rel = np.log(lines.unit_prices()[keep]) - local_median[lines.item_product[keep]]
        has_price = np.isfinite(log_rel)
        log_rel = np.where(has_price, log_rel, 0.0).astype(np.float32)
        promo = has_price & (log_rel <= PROMO_LOG_THRESHOLD)

        customer_ids, customer_keys = self._customer_keys(lines.basket_strings("customer_id") or [None] * n)
        stores = lines.basket_strings("store_id") or [None] * n
        store_ids = np.array([stats.store_ids.get(s, 0) for s in stores], np.int32)
        regions = lines.basket_strings("store_region") or [None] * n
        region_ids = np.array([stats.region_ids.get(r, 0) for r in regions], np.int16)
        time_days = (lines.week - 1) * 7.0 + lines.weekday + lines.hour / 24.0
        trip = self.state.step(lines.week, customer_keys.astype(np.int64), time_days, store_ids.astype(np.int64),
                               n_items_total)

        def listed(values: np.ndarray) -> pa.Array:
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

        columns = {
            "basket_id": lines.basket_ids.cast(pa.string()),
            "customer_id": customer_ids,
            "customer_key": customer_keys,
            "store_id": store_ids,
            "store_format": lines.basket_label_ids("store_format"),
            "store_region": region_ids,
            "customer_segment": lines.basket_label_ids("customer_segment"),
            "customer_price_band": lines.basket_label_ids("customer_price_band"),
            "week": np.full(n, lines.week, np.int16),
            "week_of_year": np.full(n, (lines.week - 1) % 52 + 1, np.int8),
            "weekday": lines.weekday,
            "hour": lines.hour,
            **{label: lines.basket_label_ids(label) for label in schema.LABEL_TARGETS},
            "items": listed(item_vocab[keep].astype(np.int32)),
            "n_items_total": n_items_total.astype(np.int32),
            "item_log_price_rel": listed(log_rel),
            "item_promo": listed(promo.astype(np.int8)),
            "item_has_price": listed(has_price.astype(np.int8)),
            "prior_baskets": trip.prior_baskets,
            "prior_mean_basket_size": trip.prior_mean_basket_size,
            "has_previous": trip.has_previous,
            "days_since_previous": trip.days_since_previous,
            "trips_this_week": trip.trips_this_week,
            "store_switch": trip.store_switch,
        }
        table = pa.Table.from_arrays(
            [pa.array(v, type=SAMPLES_SCHEMA.field(k).type) if isinstance(v, np.ndarray) else v.cast(SAMPLES_SCHEMA.field(k).type)
             for k, v in columns.items()],
            schema=SAMPLES_SCHEMA,
        )
        info = {
            "items": int(len(keep)),
            "truncated_baskets": int((n_items_total > schema.MAX_BASKET_ITEMS).sum()),
            "anonymous_baskets": int((customer_keys == 0).sum()),
            "unk_items": int((item_vocab[keep] == self.unk).sum()),
        }
        return table, info


def corrupt_samples_error(file: Path, problem: str, *, column: str | None = None,
                          row: int | None = None) -> RetailSimInputError:
    """One sentence for a file of a Stage 1 folder that is not as Stage 1 writes it."""
    return input_error(f"--samples {file}", problem + CORRUPT_SAMPLES, column=column, row=row)


def read_metadata(samples: Path) -> dict:
    """metadata.json of a Stage 1 folder, its sizes checked; a folder that is not one is a user error naming
    --samples, a metadata.json of the wrong shape one naming the file and the field."""
    samples = Path(samples)
    if not samples.is_dir():
        raise RetailSimInputError(f"--samples {samples}: no such folder.")
    meta_path = samples / "metadata.json"
    metadata = None
    if meta_path.is_file():
        with reading(meta_path, "JSON", name=f"--samples {meta_path}", advice=CORRUPT_SAMPLES):
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(metadata, dict) or metadata.get("format") != "retailsim-samples":
        raise RetailSimInputError(
            f"--samples {samples} is not a Stage 1 output (no valid metadata.json); run `retailsim prepare-samples`."
        )
    if metadata.get("format_version") != SAMPLES_FORMAT_VERSION:
        raise RetailSimInputError(
            f"--samples {samples} was written by samples format {metadata.get('format_version')}, expected "
            f"{SAMPLES_FORMAT_VERSION}; rerun `retailsim prepare-samples`."
        )
    for name in [f"{split}.parquet" for split in schema.SPLITS] + ["vocab.json"]:
        if not (samples / name).is_file():
            problem = "is not a file" if (samples / name).exists() else "is missing"
            raise RetailSimInputError(f"--samples {samples} is not a complete Stage 1 output: {name} {problem}.")
    _check_metadata_sizes(meta_path, metadata)
    return metadata


def _check_metadata_sizes(path: Path, metadata: dict) -> None:
    for name, least in METADATA_SIZES.items():
        value = metadata.get(name)
        if type(value) is not int or value < least:  # not isinstance: True is no size
            found = f"is {value!r}" if name in metadata else "is missing"
            raise corrupt_samples_error(path, f"{name} {found}, expected a whole number >= {least}")
    n_weeks, n_products = metadata["n_weeks"], metadata["n_products"]
    if n_weeks > schema.MAX_WEEKS:
        raise corrupt_samples_error(path, f"n_weeks is {n_weeks}, more than the {schema.MAX_WEEKS} weeks supported")
    if metadata["vocab_size"] != schema.vocab_size(n_products):
        raise corrupt_samples_error(path, f"vocab_size is {metadata['vocab_size']}, expected n_products + 3 = "
                                          f"{schema.vocab_size(n_products)}")
    if metadata["n_customer_keys"] < metadata["n_customers"] + 1:
        raise corrupt_samples_error(path, f"n_customer_keys is {metadata['n_customer_keys']}, expected at least "
                                          f"n_customers + 1 = {metadata['n_customers'] + 1}")
    split = metadata.get("split_weeks")
    bounds = [split.get(name) if isinstance(split, dict) else None for name in schema.SPLITS]
    flat = [value for pair in bounds if isinstance(pair, list) and len(pair) == 2 for value in pair]
    contiguous = (len(flat) == 6 and all(type(value) is int for value in flat) and flat[0] == 1
                  and flat[5] == n_weeks and flat[2] == flat[1] + 1 and flat[4] == flat[3] + 1
                  and all(flat[i] <= flat[i + 1] for i in (0, 2, 4)))
    if not contiguous:
        raise corrupt_samples_error(path, f"split_weeks is {split!r}, expected [first, last] week ranges of "
                                          f"{', '.join(schema.SPLITS)} covering weeks 1..{n_weeks} in order")
