"""Promotion plans in the canonical schema (``schema.PROMOTION_COLUMNS``): what a retailer knows before a week
starts, read beside the transactions.

So far one adapter: the generator's own plan (``promotions.parquet`` next to its LGSR week files), read in
row groups (one per week), its SHOP_WEEK codes mapped to the ordinal weeks the LGSR reader gives the week
files. Stage 1 keeps it over the product vocabulary (``write_samples_plan``: the samples folder's
``promotions.parquet``). The Complete Journey and generic adapters, store- and customer-specific plans and the
tensor cache's candidate lists are still to come (issue 17).
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class PlanSummary:
    rows: int = 0
    weeks: int = 0
    products: int = 0

    def line(self) -> str:
        return f"promotion plan: {self.rows:,} product-weeks over {self.weeks} weeks, {self.products:,} products"


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


def summarise(tables: Iterator[pa.Table]) -> PlanSummary:
    """Rows, distinct weeks and distinct products of a plan (streamed: one table at a time)."""
    summary, weeks, products = PlanSummary(), set(), set()
    for table in tables:
        summary.rows += table.num_rows
        weeks.update(table.column("week").to_numpy().tolist())
        products.update(table.column("product_id").to_pylist())
    summary.weeks, summary.products = len(weeks), len(products)
    return summary


# --- Stage 1: the plan over the product vocabulary ----------------------------------------------------------
SAMPLES_PLAN_FILE = "promotions.parquet"
SAMPLES_PLAN_SCHEMA = pa.schema([("week", pa.int16()), ("product", pa.int32()), ("discount", pa.float32())])


def write_samples_plan(tables: Iterator[pa.Table], path: Path, product_vocab_id: dict[str, int], unk: int,
                       n_weeks: int, source_file: str | Path) -> dict:
    """Stage 1's copy of a plan: one row per (week, vocabulary product), a row group per source table, sorted
    by product within it; a product outside the vocabulary (UNK) is dropped and counted. Streamed: one source
    table at a time, the product lookup in Arrow (no Python object per row). Returns metadata.json's entry.

    Only chain-wide plans so far (the generator's): a plan with store or customer columns is refused until
    Stage 1 maps those ids (issue 17)."""
    keys = pa.array(list(product_vocab_id), pa.string())
    ids = np.fromiter(product_vocab_id.values(), dtype=np.int32, count=len(product_vocab_id))
    entry = {"file": SAMPLES_PLAN_FILE, "rows": 0, "rows_in_source": 0, "dropped_out_of_vocabulary": 0,
             "weeks": 0}
    weeks: set[int] = set()
    with pq.ParquetWriter(path, SAMPLES_PLAN_SCHEMA) as writer:
        for table in tables:
            for column in ("store_id", "customer_id"):
                if column in table.column_names:
                    raise validation.input_error(source_file, "store- or customer-specific promotion plans are "
                                                              "not supported yet", column=column)
            week = table.column("week").to_numpy()
            outside = (week < 1) | (week > n_weeks)
            if outside.any():
                raise validation.input_error(source_file, f"week {int(week[outside][0])} lies outside the data's "
                                                          f"weeks 1..{n_weeks}", column="week")
            position = pc.index_in(table.column("product_id"), value_set=keys)
            position = pc.fill_null(position, -1).to_numpy()
            product = np.where(position >= 0, ids[np.maximum(position, 0)], unk)
            keep = product != unk
            discount = table.column("discount").to_numpy() if "discount" in table.column_names \
                else np.full(len(week), np.nan)
            order = np.lexsort((product[keep], week[keep]))
            writer.write_table(pa.table({
                "week": pa.array(week[keep][order].astype(np.int16)),
                "product": pa.array(product[keep][order].astype(np.int32)),
                "discount": pa.array(discount[keep][order].astype(np.float32)),
            }, schema=SAMPLES_PLAN_SCHEMA))
            entry["rows"] += int(keep.sum())
            entry["rows_in_source"] += len(week)
            entry["dropped_out_of_vocabulary"] += int((~keep).sum())
            weeks.update(np.unique(week[keep]).tolist())
    entry["weeks"] = len(weeks)
    return entry


def plan_line(entry: dict) -> str:
    """The plan's summary line of prepare-samples."""
    return (f"  promotion plan: {entry['rows']:,} product-weeks over {entry['weeks']} weeks "
            f"({entry['dropped_out_of_vocabulary']:,} of {entry['rows_in_source']:,} dropped: products outside "
            f"the vocabulary)")
