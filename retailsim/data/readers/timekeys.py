"""Turning a source's notion of time into canonical ordinal weeks (1-based), weekday (0 = Monday) and hour.

Three kinds of source time are understood (see generic.py for which wins):
- a ``week`` number: ordinal weeks as they are (shifted so the first week present is 1, gaps kept), or LGSR-style
  ``YYYYWW`` codes when every value is a valid ISO year-week (then counted in calendar weeks across years);
- a ``timestamp``: datetimes (or ISO strings) -> ISO weeks (Monday-based), counted from the first week present;
- an ``order_number`` per customer: the order's position in the customer's sequence, or, with
  ``days_since_prior_order``, 1 + (days since the customer's first order) // 7.
"""
from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retailsim.data.readers import validation

_EPOCH = dt.date(1970, 1, 1)


def to_timestamp(values: pa.ChunkedArray | pa.Array, file: str | os.PathLike, column: str, *, header_lines: int = 0,
                 row_offset: int = 0) -> pa.ChunkedArray | pa.Array:
    """Datetimes as naive wall-clock timestamps; strings must be ISO 8601 (a bad one names its row)."""
    kind = values.type
    if pa.types.is_timestamp(kind):
        return pc.local_timestamp(values) if kind.tz else values
    if pa.types.is_date(kind):
        return pc.cast(values, pa.timestamp("s"))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = pc.if_else(pc.equal(pc.utf8_trim_whitespace(values), ""), pa.scalar(None, kind), values)
        try:
            return pc.cast(values, pa.timestamp("us"))
        except pa.ArrowInvalid:
            for index, value in enumerate(values.to_pylist()):
                try:
                    if value is not None:
                        dt.datetime.fromisoformat(value)
                except ValueError:
                    row = row_offset + index + 1
                    raise validation.input_error(file, f"expected a date-time like 2017-01-31 14:05:00, got {value!r}",
                                                 column=column, row=row,
                                                 line=row + header_lines if header_lines else None) from None
            raise validation.input_error(file, "expected ISO 8601 date-times (YYYY-MM-DD hh:mm:ss)", column=column)
    raise validation.input_error(file, f"expected date-times, found values of type {kind}", column=column)


def date_time_example(values: pa.ChunkedArray | pa.Array) -> str | None:
    """How a column of date-times shows (its type, or its first value when that is an ISO date-time string),
    or None when the column holds something else (numbers, say). Used to tell a week column that is a date."""
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return str(kind)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    present = pc.drop_null(values)
    first = present[0].as_py().strip() if len(present) else ""
    try:
        float(first)
        return None
    except ValueError:
        pass
    try:
        dt.datetime.fromisoformat(first)
    except ValueError:
        return None
    return f"like {first!r}"


def monday_day_numbers(timestamps: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Days since 1970-01-01 of the Monday starting each timestamp's ISO week."""
    days = pc.cast(pc.cast(timestamps, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    weekday = pc.day_of_week(timestamps).to_numpy(zero_copy_only=False).astype(np.int64)
    return days - weekday


def yyyyww_monday(code: int) -> int | None:
    """Monday (days since epoch) of ISO week ``code`` = YYYYWW, or None if ``code`` is not a valid year-week."""
    year, week = divmod(int(code), 100)
    if not 1900 <= year <= 2200 or not 1 <= week <= 53:
        return None
    try:
        return (dt.date.fromisocalendar(year, week, 1) - _EPOCH).days
    except ValueError:
        return None


def week_numbers_to_ordinals(unique_weeks: np.ndarray) -> dict[int, int]:
    """Raw week value -> ordinal week, for every value present (see the module docstring)."""
    mondays = [yyyyww_monday(code) for code in unique_weeks]
    if len(unique_weeks) and all(monday is not None for monday in mondays) and int(unique_weeks.min()) >= 190001:
        first = min(mondays)
        return {int(code): (monday - first) // 7 + 1 for code, monday in zip(unique_weeks, mondays)}
    first = int(unique_weeks.min())
    return {int(code): int(code) - first + 1 for code in unique_weeks}


def lookup(values: pa.ChunkedArray | pa.Array, table: dict[int, int]) -> pa.Array:
    keys = pa.array(list(table), pa.int64())
    ordinals = pa.array(list(table.values()), pa.int64())
    return pc.take(ordinals, pc.index_in(values, value_set=keys))


def order_sequence_weeks(customer_keys: np.ndarray, order_numbers: np.ndarray,
                         days_since_prior: np.ndarray | None) -> np.ndarray:
    """Ordinal week of each (customer, order) pair; the pairs are unique. Without day gaps the week is the
    order's position in the customer's sequence; with them, 1 + (days since the customer's first order) // 7
    (the first order's own gap, often missing, counts as 0)."""
    order = np.lexsort((order_numbers, customer_keys))
    keys_sorted = customer_keys[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = keys_sorted[1:] != keys_sorted[:-1]
    group = np.cumsum(starts) - 1
    position = np.arange(len(order)) - np.flatnonzero(starts)[group]
    if days_since_prior is None:
        weeks_sorted = position + 1
    else:
        gaps = np.nan_to_num(days_since_prior[order].astype(np.float64), nan=0.0)
        gaps[starts] = 0.0
        elapsed = np.cumsum(gaps)
        elapsed -= elapsed[np.flatnonzero(starts)][group]
        weeks_sorted = (elapsed // 7).astype(np.int64) + 1
    weeks = np.empty(len(order), dtype=np.int64)
    weeks[order] = weeks_sorted
    return weeks
