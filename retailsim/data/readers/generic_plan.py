"""A promotion plan of your own beside generic transactions (the CLI's ``--promotions PATH --promotions-map ...``).

A CSV or Parquet file, or a folder of them, one row per promoted product and week (``schema.PROMOTION_COLUMNS``):
``product_id`` and the week it is for are required; ``store_id`` (empty = every store), ``discount`` (a fraction
in [0, 1)), ``display`` and ``mailer`` (non-zero = yes, empty = not given) are optional. ``mapping`` names the
source column of each; columns already named canonically map to themselves.

The plan's time is read in the transactions' own terms, so a plan week is the week its transactions get:
- transactions with a ``week`` column: the plan's ``week`` holds the same numbering (ordinal numbers or
  YYYYWW codes), shifted as the transactions' are;
- transactions with a ``timestamp``: the plan's ``timestamp`` is any date-time in the week it is for;
- transactions ordered by ``order_number`` have no calendar, so no plan can name their weeks: refused.
A plan week before the transactions' first week or after their last is refused (it cannot be a week of the
data). One file (or Parquet row group) is read at a time and handed on as a canonical table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retailsim.data.readers import timekeys, validation
from retailsim.data.readers.generic import check_columns_in, discover_files, file_chunks, map_columns, read_raw

PLAN_MAPPABLE = ("product_id", "week", "timestamp", "store_id", "discount", "display", "mailer")
_KINDS = {"product_id": "str", "store_id": "str", "week": "int", "discount": "float", "display": "float",
          "mailer": "float"}


class GenericPlan:
    """The plan file(s) at ``path`` read against ``source`` (a ``GenericSource``: its weeks)."""

    def __init__(self, path: str | Path, mapping: dict[str, str], source) -> None:
        self.path, self.source = Path(path), source
        if source.time_mode == "order_number":
            raise validation.input_error(self.path, "a promotion plan needs calendar weeks, but the transactions' "
                                                    "time is an order number per customer (map week or timestamp)")
        self.time = "week" if source.time_mode == "week" else "timestamp"
        other = "timestamp" if self.time == "week" else "week"
        if other in mapping:
            raise validation.input_error(self.path, f"the transactions' time is {self.time}, so the plan's must be "
                                                    f"too (--promotions-map {self.time}=COLUMN, not {other})")
        self.files = discover_files(self.path)
        self.sources = map_columns(self.files, mapping, ("product_id", self.time, "store_id", "discount", "display",
                                                         "mailer"), "--promotions-map")
        for name in ("product_id", self.time):
            if name not in self.sources:
                raise validation.input_error(self.files[0], f"the promotion plan's required column {name} is "
                                                            f"missing (name it with --promotions-map {name}=COLUMN)",
                                             column=name)
        check_columns_in(self.files[1:], self.sources)

    def tables(self) -> Iterator[pa.Table]:
        """The plan as canonical tables (product_id, week, [store_id], discount, display, mailer), one per chunk
        (a CSV file or a Parquet row group)."""
        n_weeks = self.source.n_weeks()
        source_names = list(dict.fromkeys(self.sources.values()))
        for chunk in file_chunks(self.files, refuse_empty=False):
            raw = read_raw(chunk, source_names)
            path, header_lines, row_offset = chunk.path, chunk.header_lines, chunk.row_offset
            where = dict(header_lines=header_lines, row_offset=row_offset)
            columns = {}
            for name, column in self.sources.items():
                values = raw.column(column)
                if name == "timestamp":
                    values = timekeys.to_timestamp(values, path, column, **where)
                elif _KINDS[name] == "str":
                    values = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
                else:
                    values = validation.cast_numeric(values, _KINDS[name], path, column, **where)
                columns[name] = values
            table = pa.table(columns)
            validation.check_not_null(table, ["product_id", self.time], path, self.sources, **where)
            week = self._ordinal_weeks(table.column(self.time), path)
            outside = (week < 1) | (week > n_weeks)
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                raise validation.input_error(
                    path, f"this plan row is for a week outside the transactions' weeks 1..{n_weeks} (it would be "
                          f"week {int(week[row])})", column=self.sources[self.time], row=row_offset + row + 1,
                    line=row_offset + row + 1 + header_lines if header_lines else None)
            out = {"product_id": table.column("product_id"), "week": pa.array(week, pa.int64())}
            if "store_id" in columns:
                out["store_id"] = table.column("store_id")
            if "discount" in columns:
                discount = table.column("discount")
                bad = pc.fill_null(pc.or_(pc.less(discount, 0.0), pc.greater_equal(discount, 1.0)), False)
                if pc.any(bad).as_py():
                    row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                    raise validation.input_error(path, "a discount must be a fraction in [0, 1)",
                                                 column=self.sources["discount"], row=row_offset + row + 1)
                out["discount"] = discount
            for flag in ("display", "mailer"):
                if flag in columns:
                    out[flag] = pc.cast(pc.not_equal(table.column(flag), 0.0), pa.int8())   # null stays null
            yield pa.table(out)

    def _ordinal_weeks(self, values: pa.ChunkedArray, path: Path) -> np.ndarray:
        """The transactions' ordinal week of each plan time value."""
        if self.time == "timestamp":
            return (timekeys.monday_day_numbers(values) - self.source.first_monday) // 7 + 1
        raw = values.to_numpy(zero_copy_only=False).astype(np.int64)
        known = self.source.week_lookup
        both = timekeys.week_numbers_to_ordinals(np.union1d(np.fromiter(known, np.int64), np.unique(raw)))
        shift = both[next(iter(known))] - known[next(iter(known))]
        if any(both[value] - shift != ordinal for value, ordinal in known.items()):
            raise validation.input_error(path, "the plan's week values do not follow the transactions' week "
                                               "numbering (YYYYWW codes in one, plain numbers in the other?)",
                                         column=self.sources["week"])
        keys = np.fromiter(both, np.int64, count=len(both))
        ordinals = np.fromiter(both.values(), np.int64, count=len(both))
        order = np.argsort(keys)
        return ordinals[order][np.searchsorted(keys[order], raw)] - shift   # every raw value is a key of ``both``
