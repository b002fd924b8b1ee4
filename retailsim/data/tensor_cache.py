"""Stage 2 — tensor cache (SPEC 3.4): Stage 1 Parquet → flat ``.npy`` arrays, each loadable with
``np.load(path, mmap_mode="r")``, described by ``cache.json``.

Layout of the output folder (n = baskets of the split, m = their items, K = customer keys, S = stream items):
  cache.json                 manifest: every array's path, dtype, shape and meaning; sizes, split weeks, ids
  vocab.json                 copy of Stage 1's vocabulary (product ids, hierarchy names, special ids)
  vocab/*.npy                per product id [vocab_size]: hierarchy ids, training basket counts, median price
  streams/*.npy              per-customer item streams, ONE for all splits (see retailsim.data.customer_streams)
  train/, validation/, test/ per-basket and per-item arrays, rows in Stage 1 order (time order)
  promotions/*.npy           the promotion plan, when Stage 1 kept one: week w's rows are
                             [plan_week_offsets[w], plan_week_offsets[w+1]) of plan_store (0 = every store),
                             plan_products and plan_discount, sorted by (store, product) (w = 0..n_weeks)
Basket b's items are ``item_ids[basket_item_offsets[b]:basket_item_offsets[b+1]]``; its history window is
``stream_items[history_start[b]:history_end[b]]`` (earlier baskets only) with ``stream_weeks`` the week of each.

Two passes over the Stage 1 files: the first sizes every array and each customer's stream slice, the second
fills them one row group (one week) at a time: basket arrays are appended to their files (heap: one week),
the stream is scattered into a memory map of its file. Every week touches most customers' slices, so the
mapped stream's pages (6 bytes per item) count in the resident set up to the stream's size; they are file
pages, flushed and unmapped every _REMAP_EVERY_ITEMS items, which the kernel can reclaim (not heap).

The Stage 1 files are checked as they are read (``samples_reader``: schema, vocab.json, every id against
metadata.json's sizes in pass 1), before anything depends on them. The cache is read back through
``retailsim.data.cache_reader.TensorCache``.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from retailsim.data import schema
from retailsim.data.customer_streams import CustomerStreamBuilder
from retailsim.data.samples import corrupt_samples_error, read_metadata
from retailsim.data.samples_reader import check_id_ranges, id_ranges, list_parts, open_samples, read_vocab, row_groups

CACHE_FORMAT_VERSION = 1
_REMAP_EVERY_ITEMS = 20_000_000  # reopen the stream memory map after this many scattered items

# name -> (dtype, per-row trailing shape, group, meaning); one row per basket unless the group says per item.
BASKET_ARRAYS: dict[str, tuple[str, tuple, str, str]] = {
    "customer_id": ("int32", (), "T1", "training customer id, 0 = anonymous or new (cold start: the 'new' vector)"),
    "customer_segment": ("int8", (), "T1", "lifestage label id (schema.LABELS['customer_segment'])"),
    "customer_price_band": ("int8", (), "T1", "price band label id (schema.LABELS['customer_price_band'])"),
    "prior_baskets": ("int32", (), "T1", "the customer's baskets before this one, all weeks (0 anonymous)"),
    "prior_mean_basket_size": ("float32", (), "T1", "mean distinct-product count of those prior baskets"),
    "week": ("int16", (), "T3", "ordinal week (trend); history ages are week - stream_weeks"),
    "week_of_year": ("int8", (), "T3", "1..52"),
    "weekday": ("int8", (), "T3", "0 = Monday .. 6 = Sunday"),
    "hour": ("int8", (), "T3", "0..23"),
    "store_id": ("int32", (), "T5", "training store id, 0 = unknown"),
    "store_format": ("int8", (), "T5", "store format label id"),
    "store_region": ("int16", (), "T5", "training region id, 0 = unknown"),
    "days_since_previous": ("float32", (), "T6", "days since the customer's previous basket, 0 without one"),
    "has_previous": ("int8", (), "T6", "1 when the customer has an earlier basket"),
    "trips_this_week": ("int16", (), "T6", "the customer's earlier baskets in the same week"),
    "store_switch": ("int8", (), "T6", "1 when the previous basket was in another store"),
    "labels": ("int8", (len(schema.LABEL_TARGETS),), "labels",
               f"targets only, never inputs: label ids of {', '.join(schema.LABEL_TARGETS)} (0 = unknown)"),
    "bucket": ("int8", (), "eval", f"index into schema.PRIOR_BUCKETS {schema.PRIOR_BUCKETS} of prior_baskets"),
    "n_items_total": ("int32", (), "eval", "distinct products before truncation to MAX_BASKET_ITEMS"),
    "customer_key": ("int32", (), "history", "stream key: = customer_id for training customers, > n_customers "
                                             "for customers first seen later, 0 anonymous"),
    "history_start": ("int64", (), "history", "start of the customer's slice of the stream"),
    "history_end": ("int64", (), "history", "end of the history window: items of earlier baskets only"),
    "history_end_week": ("int64", (), "history", "<= history_end: items of earlier weeks only"),
}
ITEM_ARRAYS: dict[str, tuple[str, tuple, str, str]] = {
    "item_ids": ("int32", (), "basket", "product ids (Stage 1 order: by id, UNK last)"),
    "item_price": ("float32", (3,), "T4", "per item: log price relative to the product's training median "
                                          "(0 without price), promotion flag, has-price flag"),
}


def _describe(path: str, dtype: str, shape: tuple, meaning: str, group: str) -> dict:
    return {"path": path, "dtype": dtype, "shape": list(shape), "group": group, "meaning": meaning}


class _NpyAppender:
    """A .npy file of known shape written front to back in chunks (no memory map, no resident growth)."""

    def __init__(self, path: Path, dtype: str, shape: tuple) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.path = header.offset, np.dtype(dtype), path
        del header
        self.file = open(path, "r+b")
        self.file.seek(self.offset)
        self.expected = int(np.prod(shape)) * self.dtype.itemsize

    def write(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, self.dtype).tobytes())

    def close(self) -> None:
        written = self.file.tell() - self.offset
        self.file.close()
        assert written == self.expected, f"{self.path}: wrote {written} bytes, expected {self.expected}"


def write_tensor_cache(samples: Path, out: Path, *, show_progress: bool = True, use_native: bool | None = None) -> dict:
    """Run Stage 2 from the Stage 1 folder ``samples`` into the (existing, empty) folder ``out``."""
    started = time.perf_counter()
    samples = Path(samples)
    metadata = read_metadata(samples)
    n_keys = int(metadata["n_customer_keys"])
    files = {split: samples / f"{split}.parquet" for split in schema.SPLITS}
    parquets = {split: open_samples(path) for split, path in files.items()}
    vocab_arrays = read_vocab(samples / "vocab.json", metadata)
    n_row_groups = sum(parquet.num_row_groups for parquet in parquets.values())

    # Pass 1: sizes of every array and of each customer's stream slice; every id checked against its range.
    sizes = {split: [0, 0] for split in schema.SPLITS}
    key_items = np.zeros(n_keys, np.int64)
    bar = tqdm(total=n_row_groups, desc="stage 2 pass 1: sizes", unit="week", disable=not show_progress)
    for split, path in files.items():
        ranges = id_ranges(metadata, split)
        for group in row_groups(path, parquets[split], list(ranges)):
            check_id_ranges(group, ranges, path, sizes[split][0])
            lengths, _ = list_parts(group.column("items"))
            keys = group.column("customer_key").to_numpy().astype(np.int64)
            sizes[split][0] += len(keys)
            sizes[split][1] += int(lengths.sum())
            key_items += np.bincount(keys, weights=lengths, minlength=n_keys).astype(np.int64)
            bar.update(1)
    bar.close()
    key_items[0] = 0  # anonymous baskets have no stream
    stream_offsets = np.concatenate([[0], np.cumsum(key_items)]).astype(np.int64)
    n_stream = int(stream_offsets[-1])

    manifest = {"format": "retailsim-tensor-cache", "format_version": CACHE_FORMAT_VERSION, "arrays": {}}
    arrays = manifest["arrays"]
    (out / "streams").mkdir()
    np.save(out / "streams" / "stream_offsets.npy", stream_offsets)
    arrays["streams/stream_offsets"] = _describe("streams/stream_offsets.npy", "int64", (n_keys + 1,), "history",
                                                 "customer key k owns stream[stream_offsets[k]:stream_offsets[k+1]]")
    for name, dtype, meaning in (("stream_items", "int32", "product ids of each customer's baskets, time order"),
                                 ("stream_weeks", "int16", "ordinal week of each stream item")):
        np.lib.format.open_memmap(out / "streams" / f"{name}.npy", mode="w+", dtype=dtype, shape=(n_stream,))
        arrays[f"streams/{name}"] = _describe(f"streams/{name}.npy", dtype, (n_stream,), "history", meaning)
    streams = _StreamFiles(out / "streams", stream_offsets, use_native)

    # Pass 2: fill the arrays, week by week, splits in time order.
    bar = tqdm(total=n_row_groups, desc="stage 2 pass 2: arrays", unit="week", disable=not show_progress)
    for split, path in files.items():
        n_baskets, n_items = sizes[split]
        (out / split).mkdir()
        writers = {}
        for table, count in ((BASKET_ARRAYS, n_baskets), (ITEM_ARRAYS, n_items)):
            for name, (dtype, trailing, group, meaning) in table.items():
                shape = (count, *trailing)
                writers[name] = _NpyAppender(out / split / f"{name}.npy", dtype, shape)
                arrays[f"{split}/{name}"] = _describe(f"{split}/{name}.npy", dtype, shape, group, meaning)
        offsets_writer = _NpyAppender(out / split / "basket_item_offsets.npy", "int64", (n_baskets + 1,))
        arrays[f"{split}/basket_item_offsets"] = _describe(
            f"{split}/basket_item_offsets.npy", "int64", (n_baskets + 1,), "basket",
            "basket b's items are item_ids[offsets[b]:offsets[b+1]] (and item_price rows)")
        offsets_writer.write(np.zeros(1, np.int64))
        items_before = 0
        for group in row_groups(path, parquets[split]):
            items_before = _write_group(group, writers, offsets_writer, streams, items_before, path)
            bar.update(1)
        for writer in [*writers.values(), offsets_writer]:
            writer.close()
    bar.close()
    streams.close()
    if not streams.builder.is_complete():
        raise AssertionError("the customer streams were not filled to their sizes")

    shutil.copyfile(samples / "vocab.json", out / "vocab.json")
    _write_vocab_arrays(vocab_arrays, out, arrays)
    if metadata.get("promotions"):
        _write_plan_arrays(samples / metadata["promotions"]["file"], int(metadata["n_weeks"]),
                           int(metadata["n_products"]), int(metadata["n_stores"]), out, arrays)
    manifest.update({
        "samples": str(samples.resolve()),
        "samples_metadata": metadata,
        "n_products": metadata["n_products"],
        "vocab_size": metadata["vocab_size"],
        "pad_id": schema.PAD_ID,
        "unk_id": schema.unk_id(metadata["n_products"]),
        "mask_id": schema.mask_id(metadata["n_products"]),
        "n_customer_keys": n_keys,
        "n_customers": metadata["n_customers"],
        "n_stores": metadata["n_stores"],
        "n_store_regions": metadata["n_store_regions"],
        "label_targets": list(schema.LABEL_TARGETS),
        "prior_buckets": list(schema.PRIOR_BUCKETS),
        "item_price_features": ["log_price_rel", "promo", "has_price"],
        "split_weeks": metadata["split_weeks"],
        "splits": {split: {"n_baskets": sizes[split][0], "n_items": sizes[split][1]} for split in schema.SPLITS},
        "n_stream_items": n_stream,
        "stream_impl": streams.builder.impl,
        "seconds": round(time.perf_counter() - started, 2),
    })
    (out / "cache.json").write_text(json.dumps(manifest, indent=2))
    return manifest


class _StreamFiles:
    """The shared stream arrays as memory maps, flushed and reopened now and then so written pages are clean."""

    def __init__(self, folder: Path, stream_offsets: np.ndarray, use_native: bool | None) -> None:
        self.folder, self.since_remap = folder, 0
        self._open()
        self.builder = CustomerStreamBuilder(stream_offsets, self.items, self.weeks, use_native=use_native)

    def _open(self) -> None:
        self.items = np.load(self.folder / "stream_items.npy", mmap_mode="r+")
        self.weeks = np.load(self.folder / "stream_weeks.npy", mmap_mode="r+")

    def add(self, keys, weeks, offsets, items):
        result = self.builder.add(keys, weeks, offsets, items)
        self.since_remap += len(items)
        if self.since_remap > _REMAP_EVERY_ITEMS:
            self.close()
            self._open()
            self.builder.stream_items, self.builder.stream_weeks = self.items, self.weeks
            self.since_remap = 0
        return result

    def close(self) -> None:
        self.items.flush()
        self.weeks.flush()
        del self.items, self.weeks


def _write_group(group: pa.Table, writers: dict, offsets_writer: _NpyAppender, streams: _StreamFiles,
                 items_before: int, path: Path) -> int:
    lengths, item_values = list_parts(group.column("items"))
    for name in ("item_log_price_rel", "item_promo", "item_has_price"):  # one value per item, or the rows shift
        if not np.array_equal(list_parts(group.column(name))[0], lengths):
            raise corrupt_samples_error(path, "a basket's list differs in length from its items", column=name)
    item_ids = item_values.to_numpy().astype(np.int32)
    local_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    keys = group.column("customer_key").to_numpy().astype(np.int64)
    weeks = group.column("week").to_numpy().astype(np.int32)
    start, end, end_week = streams.add(keys, weeks, local_offsets, item_ids)
    column = lambda name: group.column(name).to_numpy()  # noqa: E731
    values = {name: column(name) for name in BASKET_ARRAYS if name in group.column_names}
    values.update(
        labels=np.stack([column(label) for label in schema.LABEL_TARGETS], axis=1),
        bucket=schema.prior_bucket(column("prior_baskets")),
        history_start=start, history_end=end, history_end_week=end_week,
        item_ids=item_ids,
        item_price=np.stack([
            pc.list_flatten(group.column("item_log_price_rel")).to_numpy(),
            pc.list_flatten(group.column("item_promo")).to_numpy(),
            pc.list_flatten(group.column("item_has_price")).to_numpy(),
        ], axis=1),
    )
    for name, writer in writers.items():
        writer.write(values[name])
    offsets_writer.write(items_before + local_offsets[1:])
    return items_before + int(local_offsets[-1])


def _write_vocab_arrays(vocab: dict[str, np.ndarray], out: Path, arrays: dict) -> None:
    """``vocab``: the checked arrays of ``_read_vocab``."""
    (out / "vocab").mkdir()
    size = len(vocab["train_baskets"])
    median = vocab["log_price_median"]
    entries = {
        "product_category": (vocab["category_ids"],
                             "hierarchy ids per product id, columns category_1..4 (finest first; names in vocab.json)"),
        "product_train_baskets": (vocab["train_baskets"].astype(np.int64),
                                  "training baskets holding the product (UNK: all rare products pooled); popularity"),
        "product_log_price_median": (np.nan_to_num(median, nan=0.0), "training median log unit price, 0 without"),
        "product_has_price": (np.isfinite(median).astype(np.int8), "1 when the product has a training median price"),
    }
    for name, (values, meaning) in entries.items():
        assert len(values) == size
        np.save(out / "vocab" / f"{name}.npy", values)
        arrays[f"vocab/{name}"] = _describe(f"vocab/{name}.npy", str(values.dtype), values.shape, "vocab", meaning)


def _write_plan_arrays(path: Path, n_weeks: int, n_products: int, n_stores: int, out: Path, arrays: dict) -> None:
    """Stage 1's plan as per-week lists of product ids (with each one's planned discount), sorted by week then
    product. A row outside the weeks or the vocabulary is a corrupt samples folder."""
    import pyarrow.parquet as pq

    try:
        plan = pq.read_table(path, columns=["week", "store", "product", "discount", "display", "mailer"])
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise corrupt_samples_error(path, f"cannot be read as Stage 1's promotion plan ({error})") from None
    week = plan.column("week").to_numpy().astype(np.int64)
    product = plan.column("product").to_numpy().astype(np.int32)
    store = plan.column("store").to_numpy().astype(np.int32)
    if len(week) and (week.min() < 1 or week.max() > n_weeks):
        raise corrupt_samples_error(path, f"a week lies outside 1..{n_weeks}", column="week")
    if len(product) and (product.min() < 1 or product.max() > n_products):
        raise corrupt_samples_error(path, f"a product id lies outside 1..{n_products}", column="product")
    if len(store) and (store.min() < 0 or store.max() > n_stores):
        raise corrupt_samples_error(path, f"a store id lies outside 0..{n_stores}", column="store")
    order = np.lexsort((product, store, week))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(week, minlength=n_weeks + 1))]).astype(np.int64)
    (out / "promotions").mkdir()
    entries = {
        "plan_week_offsets": (offsets, f"[n_weeks + 2]: week w's plan is plan_products[offsets[w]:offsets[w+1]]"),
        "plan_store": (store[order], "the store a row holds in, 0 = every store"),
        "plan_products": (product[order], "promoted product ids, by week, store, id"),
        "plan_discount": (plan.column("discount").to_numpy().astype(np.float32)[order],
                          "planned fraction off (NaN: not given)"),
        "plan_display": (plan.column("display").to_numpy().astype(np.int8)[order],
                         "1 = on an in-store display, 0 = not, -1 = not given"),
        "plan_mailer": (plan.column("mailer").to_numpy().astype(np.int8)[order],
                        "1 = in the week's mailer, 0 = not, -1 = not given"),
    }
    for name, (values, meaning) in entries.items():
        np.save(out / "promotions" / f"{name}.npy", values)
        arrays[f"promotions/{name}"] = _describe(f"promotions/{name}.npy", str(values.dtype), values.shape,
                                                 "promotions", meaning)
