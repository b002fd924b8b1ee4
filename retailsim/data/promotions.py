"""Promotion plans in the canonical schema (``schema.PROMOTION_COLUMNS``): what a retailer knows before a week
starts, read beside the transactions.

So far one adapter: the generator's own plan (``promotions.parquet`` next to its LGSR week files), read in
row groups (one per week), its SHOP_WEEK codes mapped to the ordinal weeks the LGSR reader gives the week
files. The Complete Journey and generic adapters and the Stage 1/2 candidate lists are still to come (issue 17).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
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
