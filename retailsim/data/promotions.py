"""Promotion plans in the canonical schema (``schema.PROMOTION_COLUMNS``): what a retailer knows before a week
starts, read beside the transactions.

Adapters: the generator's own plan (``promotions.parquet`` next to its LGSR week files, here), read in row
groups (one per week), its SHOP_WEEK codes mapped to the ordinal weeks the LGSR reader gives the week files;
The Complete Journey's promotions table (readers/completejourney.py); a plan of your own beside generic
transactions (readers/generic_plan.py). Stage 1 keeps a plan over the product vocabulary and the training
stores (``write_samples_plan``: the samples folder's ``promotions.parquet``), Stage 2 as per-week lists
(``PromotionPlan`` reads them back for a basket's week and store, and pads them for the Batch). Not yet:
customer-specific rows (targeted coupons).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retailsim.data import schema
from retailsim.data.readers import validation
from retailsim.data.readers.lgsr import LGSRSource

CANONICAL_PLAN_SCHEMA = pa.schema([("product_id", pa.string()), ("week", pa.int64()), ("discount", pa.float64()),
                                   ("price", pa.float64())])
_RAW_COLUMNS = ("PROD_CODE", "SHOP_WEEK", "DISCOUNT", "PRICE")


def generator_plan_path(folder: str | Path) -> Path | None:
    """The generator's plan file in ``folder``, or None when the folder has none (any other source)."""
    path = Path(folder) / schema.GENERATOR_PROMOTION_FILE
    return path if path.is_file() else None


def read_generator_plan(folder: str | Path) -> Iterator[pa.Table]:
    """The plan of a generated folder as canonical tables, one per row group (week), in file order.

    A SHOP_WEEK with no week file in the folder, or a discount outside [0, 1), is an input error naming the
    file and column."""
    folder = Path(folder)
    path = generator_plan_path(folder)
    if path is None:
        raise validation.input_error(folder / schema.GENERATOR_PROMOTION_FILE, "no promotion plan here")
    week_codes = np.asarray(LGSRSource(folder).week_codes, dtype=np.int64)   # ordinal = position + 1
    try:
        plan = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise validation.input_error(path, f"not a Parquet file ({error})") from None
    validation.require_columns(tuple(plan.schema_arrow.names), _RAW_COLUMNS, path, what="promotion plan column")
    for group in range(plan.num_row_groups):
        raw = plan.read_row_group(group, columns=list(_RAW_COLUMNS))
        codes = raw.column("SHOP_WEEK").to_numpy().astype(np.int64)
        position = np.minimum(np.searchsorted(week_codes, codes), len(week_codes) - 1)
        unknown = week_codes[position] != codes
        if unknown.any():
            missing = int(codes[unknown][0])
            raise validation.input_error(path, f"SHOP_WEEK {missing} has no week file transactions_{missing}.csv "
                                               f"in {folder}", column="SHOP_WEEK")
        week = position + 1
        discount = raw.column("DISCOUNT").to_numpy()
        if ((discount < 0) | (discount >= 1) | np.isnan(discount)).any():
            raise validation.input_error(path, "a discount must be a fraction in [0, 1)", column="DISCOUNT")
        yield pa.table({"product_id": raw.column("PROD_CODE"), "week": pa.array(week, pa.int64()),
                        "discount": pa.array(discount), "price": raw.column("PRICE")}, schema=CANONICAL_PLAN_SCHEMA)


# --- Stage 1: the plan over the product vocabulary ----------------------------------------------------------
SAMPLES_PLAN_FILE = "promotions.parquet"
SAMPLES_PLAN_SCHEMA = pa.schema([("week", pa.int16()), ("store", pa.int32()), ("product", pa.int32()),
                                 ("discount", pa.float32()), ("display", pa.int8()), ("mailer", pa.int8())])
NOT_GIVEN = -1  # display / mailer of a plan that does not say


def _id_table(table: dict[str, int]) -> tuple[pa.Array, np.ndarray]:
    """(keys, ids) of a str -> id dict, built once for ``_lookup``."""
    return pa.array(list(table), pa.string()), np.fromiter(table.values(), dtype=np.int64, count=len(table))


def _lookup(values: pa.ChunkedArray | pa.Array, id_table: tuple[pa.Array, np.ndarray], missing: int) -> np.ndarray:
    """ids of string ``values`` through ``id_table`` (Arrow's hash lookup, no Python object per row); ``missing``
    where a value is not in it, 0 where it is null."""
    keys, ids = id_table
    position = pc.fill_null(pc.index_in(pc.cast(values, pa.string()), value_set=keys), -1).to_numpy()
    out = np.where(position >= 0, ids[np.maximum(position, 0)] if len(ids) else 0, missing)
    nulls = pc.is_null(values).to_numpy(zero_copy_only=False)
    return np.where(nulls, 0, out)


def write_samples_plan(tables: Iterator[pa.Table], path: Path, product_vocab_id: dict[str, int], unk: int,
                       store_ids: dict[str, int], n_weeks: int, source_file: str | Path) -> dict:
    """Stage 1's copy of a plan: one row per (week, store, vocabulary product), store 0 = every store, a row
    group per source table, sorted by (week, store, product) within it. A product outside the vocabulary (UNK)
    or a store not among the training stores is dropped and counted. Streamed: one source table at a time.
    Returns metadata.json's entry.

    Customer-specific rows (targeted coupons) are refused until Stage 1 maps customer keys (issue 17)."""
    entry = {"file": SAMPLES_PLAN_FILE, "rows": 0, "rows_in_source": 0, "dropped_out_of_vocabulary": 0,
             "dropped_unknown_store": 0, "weeks": 0, "store_specific_rows": 0}
    weeks: set[int] = set()
    products, stores = _id_table(product_vocab_id), _id_table(store_ids)   # once, not per source table
    with pq.ParquetWriter(path, SAMPLES_PLAN_SCHEMA) as writer:
        for table in tables:
            if "customer_id" in table.column_names:
                raise validation.input_error(source_file, "customer-specific promotion plans (targeted coupons) "
                                                          "are not supported yet", column="customer_id")
            week = table.column("week").to_numpy()
            outside = (week < 1) | (week > n_weeks)
            if outside.any():
                raise validation.input_error(source_file, f"week {int(week[outside][0])} lies outside the data's "
                                                          f"weeks 1..{n_weeks}", column="week")
            product = _lookup(table.column("product_id"), products, unk)
            store = (_lookup(table.column("store_id"), stores, -1) if "store_id" in table.column_names
                     else np.zeros(len(week), np.int64))
            in_vocab, known_store = (product != unk) & (product > 0), store >= 0
            keep = in_vocab & known_store
            def optional(name, missing):
                if name not in table.column_names:
                    return np.full(len(week), missing)
                return pc.fill_null(table.column(name), missing).to_numpy()

            discount, display, mailer = optional("discount", np.nan), optional("display", NOT_GIVEN), \
                optional("mailer", NOT_GIVEN)
            order = np.lexsort((product[keep], store[keep], week[keep]))
            writer.write_table(pa.table({
                "week": pa.array(week[keep][order].astype(np.int16)),
                "store": pa.array(store[keep][order].astype(np.int32)),
                "product": pa.array(product[keep][order].astype(np.int32)),
                "discount": pa.array(discount[keep][order].astype(np.float32)),
                "display": pa.array(display[keep][order].astype(np.int8)),
                "mailer": pa.array(mailer[keep][order].astype(np.int8)),
            }, schema=SAMPLES_PLAN_SCHEMA))
            entry["rows"] += int(keep.sum())
            entry["rows_in_source"] += len(week)
            entry["dropped_out_of_vocabulary"] += int((~in_vocab).sum())
            entry["dropped_unknown_store"] += int((in_vocab & ~known_store).sum())
            entry["store_specific_rows"] += int((keep & (store > 0)).sum())
            weeks.update(np.unique(week[keep]).tolist())
    entry["weeks"] = len(weeks)
    return entry


def plan_line(entry: dict) -> str:
    """The plan's summary line of prepare-samples."""
    stores = f", {entry['store_specific_rows']:,} of them for one store" if entry.get("store_specific_rows") else ""
    return (f"  promotion plan: {entry['rows']:,} product-weeks over {entry['weeks']} weeks{stores} "
            f"({entry['dropped_out_of_vocabulary']:,} of {entry['rows_in_source']:,} dropped: products outside "
            f"the vocabulary; {entry.get('dropped_unknown_store', 0):,}: stores not in the training weeks)")


PROMOTION_FEATURES = ("discount", "has_discount", "display", "mailer")  # Batch.promotion_features, in order
# Promoted products a basket's list keeps (Batch.promotion_items' width at most): The Complete Journey promotes
# 540 of its 5,000 most-bought products at the median store and week, 856 at most (display or mailer).
DEFAULT_MAX_PROMOTIONS = 1024


class PromotionPlan:
    """A tensor cache's plan: which products are promoted to a basket, from its week and store (a row of store
    0 holds in every store), and what the plan says of each (``PROMOTION_FEATURES``: the planned fraction off,
    0 when not given; whether one is given; on display; in the mailer; a flag the plan does not give is 0).
    Built from the cache's per-week arrays; the (week, store) lists are cut on first use."""

    def __init__(self, week_offsets: np.ndarray, stores: np.ndarray, products: np.ndarray, vocab_size: int,
                 discount: np.ndarray | None = None, display: np.ndarray | None = None,
                 mailer: np.ndarray | None = None):
        self.week_offsets, self.stores, self.products, self.vocab_size = week_offsets, stores, products, vocab_size
        n = len(products)
        self.discount = np.full(n, np.nan, np.float32) if discount is None else discount
        self.display = np.full(n, NOT_GIVEN, np.int8) if display is None else display
        self.mailer = np.full(n, NOT_GIVEN, np.int8) if mailer is None else mailer
        self._lists: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def n_rows(self) -> int:
        return len(self.products)

    def _entry(self, week: int, store: int) -> tuple[np.ndarray, np.ndarray]:
        """(product ids [k] ascending, features [k, 4] float32) of ``week`` at ``store``; a product with an
        every-store row and a row of its own takes the larger of each feature."""
        key = (week, store)
        if key not in self._lists:
            if not 0 <= week < len(self.week_offsets) - 1:
                self._lists[key] = (np.zeros(0, np.int64), np.zeros((0, len(PROMOTION_FEATURES)), np.float32))
            else:
                lo, hi = self.week_offsets[week], self.week_offsets[week + 1]
                rows = self.stores[lo:hi]
                keep = lo + np.flatnonzero((rows == 0) | ((rows == store) & (store > 0)))
                products, inverse = np.unique(self.products[keep], return_inverse=True)
                discount = self.discount[keep].astype(np.float32)
                given = ~np.isnan(discount)
                rows_features = np.stack([np.where(given, discount, 0.0), given, self.display[keep] > 0,
                                          self.mailer[keep] > 0], axis=1).astype(np.float32)
                features = np.zeros((len(products), len(PROMOTION_FEATURES)), np.float32)
                np.maximum.at(features, inverse, rows_features)
                self._lists[key] = (products.astype(np.int64), features)
        return self._lists[key]

    def products_for(self, week: int, store: int) -> np.ndarray:
        """Product ids promoted in ``week`` at ``store``: the week's every-store rows and that store's own."""
        return self._entry(week, store)[0]

    def padded(self, weeks, stores, max_promotions: int = DEFAULT_MAX_PROMOTIONS):
        """The promoted products of each basket (its week and store) as the Batch's padded lists: (items [B, P]
        int64, 0 = padding; features [B, P, 4] float32; valid [B, P] bool), P = the longest list (at least 1).
        A list longer than ``max_promotions`` keeps the products with the largest discount, then those on
        display or in the mailer, then the lowest ids (the vocabulary's most bought; deterministic)."""
        if max_promotions < 1:
            raise ValueError(f"max_promotions must be at least 1, got {max_promotions}.")
        entries = []
        for week, store in zip(np.asarray(weeks).tolist(), np.asarray(stores).tolist()):
            products, features = self._entry(week, store)
            if len(products) > max_promotions:
                order = np.lexsort((products, -(features[:, 2] + features[:, 3]), -features[:, 0]))
                keep = np.sort(order[:max_promotions])
                products, features = products[keep], features[keep]
            entries.append((products, features))
        width = max([1] + [len(p) for p, _ in entries])
        items = np.zeros((len(entries), width), np.int64)
        features = np.zeros((len(entries), width, len(PROMOTION_FEATURES)), np.float32)
        valid = np.zeros((len(entries), width), bool)
        for b, (p, f) in enumerate(entries):
            items[b, :len(p)], features[b, :len(p)], valid[b, :len(p)] = p, f, True
        return items, features, valid

    def rows(self, weeks, stores):
        """bool torch tensor [B, vocab_size]: the products promoted to each basket (its week and store)."""
        import torch

        table = torch.zeros(len(weeks), self.vocab_size, dtype=torch.bool)
        for b, (week, store) in enumerate(zip(np.asarray(weeks).tolist(), np.asarray(stores).tolist())):
            table[b, torch.from_numpy(self.products_for(week, store))] = True
        return table
