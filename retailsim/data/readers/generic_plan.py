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
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from retailsim.data.readers import timekeys, validation
from retailsim.data.readers.generic import _is_csv, discover_files, parquet_file, source_columns

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
        available = source_columns(self.files[0])
        mapped = set(mapping.values())
        self.sources: dict[str, str] = {}
        for name in ("product_id", self.time, "store_id", "discount", "display", "mailer"):
            if name in mapping:
                if mapping[name] not in available:
                    raise validation.input_error(self.files[0], f"the column mapped to {name} by --promotions-map "
                                                                f"is not in the file", column=mapping[name])
                self.sources[name] = mapping[name]
            elif name in available and name not in mapped:
                self.sources[name] = name
        for name in ("product_id", self.time):
            if name not in self.sources:
                raise validation.input_error(self.files[0], f"the promotion plan's required column {name} is "
                                                            f"missing (name it with --promotions-map {name}=COLUMN)",
                                             column=name)
        for path in self.files[1:]:
            columns = set(source_columns(path))
            for name, column in self.sources.items():
                if column not in columns:
                    raise validation.input_error(path, f"the column (read as {name}) is missing from this file",
                                                 column=column)

    def _chunks(self) -> Iterator[tuple[Path, pa.Table, int, int]]:
        """(file, raw table, header lines, rows before it) per CSV file or Parquet row group."""
        columns = list(dict.fromkeys(self.sources.values()))
        for path in self.files:
            if _is_csv(path):
                with validation.reading(path, "CSV"):
                    try:
                        raw = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                            column_types={c: pa.string() for c in columns}, include_columns=columns,
                            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))
                    except pa.ArrowInvalid as error:
                        raise validation.csv_parse_error(path, error, len(source_columns(path))) from None
                yield path, raw, 1, 0
                continue
            offset = 0
            for group in range(parquet_file(path).metadata.num_row_groups):
                with validation.reading(path, "Parquet"):
                    raw = pq.ParquetFile(path).read_row_group(group, columns=columns)
                yield path, raw, 0, offset
                offset += raw.num_rows

    def tables(self) -> Iterator[pa.Table]:
        """The plan as canonical tables (product_id, week, [store_id], discount, display, mailer), one per chunk."""
        n_weeks = self.source.n_weeks()
        for path, raw, header_lines, row_offset in self._chunks():
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
