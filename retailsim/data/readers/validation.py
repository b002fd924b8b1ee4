"""Checks and clean-up shared by every input adapter (SPEC 3.1).

Errors the user can cause become one ``RetailSimInputError`` sentence naming the file, the row (where known) and
the column. What is tolerated is repaired and counted in ``InputCounters``: lines with quantity <= 0 are dropped,
identical duplicate lines are collapsed to one, label values outside ``schema.LABELS`` become the unknown label.

Every file is opened and read inside ``reading(path, kind)``: whatever the file system or the format library
raises on a file that is truncated, corrupt, not of its kind, not UTF-8 or a folder becomes that one sentence.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retailsim.data.schema import CANONICAL_COLUMNS, LABELS, MAX_WEEKS, UNKNOWN_LABEL
from retailsim.data.sources import InputCounters
from retailsim.errors import RetailSimInputError, first_line

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
# Lines are "identical" when every canonical column agrees; these columns are checked first because two lines
# that differ in any of them cannot be duplicates, which spares the full comparison on most weeks.
_DUPLICATE_PREFILTER = ("basket_id", "product_id", "quantity", "spend")
# What reading a bad file raises: OSError (also pyarrow's ArrowIOError, a folder, a bad gzip), EOFError (a
# truncated gzip/bz2), zlib.error, pyarrow's ArrowException (ArrowInvalid: not Parquet, truncated, bad thrift),
# UnicodeDecodeError (not UTF-8), json.JSONDecodeError.
_READ_FAILURES = (OSError, EOFError, zlib.error, pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError)
_TEXT_OPENERS = {".gz": gzip.open, ".bz2": bz2.open}
_MAX_HEADER_CHARS = 1 << 20  # a header line longer than this is not a CSV header


def canonical_schema(columns: Iterable[str]) -> pa.Schema:
    """Arrow schema of the canonical table restricted to ``columns``, in canonical order."""
    wanted = set(columns)
    return pa.schema([(c.name, ARROW_TYPES[c.kind]) for c in CANONICAL_COLUMNS if c.name in wanted])


def input_error(file: str | os.PathLike, problem: str, *, column: str | None = None, row: int | None = None,
                line: int | None = None) -> RetailSimInputError:
    """One sentence: ``<file>, line L (row R), column C: <problem>.`` Rows count data rows from 1."""
    where = [str(file)]
    if row is not None:
        where.append(f"line {line} (row {row})" if line is not None else f"row {row}")
    if column is not None:
        where.append(f"column {column}")
    return RetailSimInputError(f"{', '.join(where)}: {problem.rstrip('.')}.")


def _read_failure(error: BaseException, file: str | os.PathLike, kind: str) -> tuple[str, str]:
    """(what went wrong reading ``file``, in words; the advice that goes with it by default). The library's
    reason is its first sentence, without the path it repeats."""
    if isinstance(error, IsADirectoryError):
        return f"expected a {kind} file, found a folder", ""
    if isinstance(error, UnicodeDecodeError):
        return f"the file is not UTF-8 text (it holds the byte 0x{error.object[error.start]:02x})", "; save it as UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return f"the file is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})", ""
    if isinstance(error, OSError) and error.strerror and not isinstance(error, pa.ArrowException):
        return f"the file cannot be read ({error.strerror})", ""
    reason = first_line(error)
    reason = reason.split(f"'{file}': ", 1)[-1].split(". ", 1)[0].rstrip(".")
    return f"the file is not a readable {kind} file ({reason})", "; it may be truncated or corrupt"


@contextlib.contextmanager
def reading(file: str | os.PathLike, kind: str, *, name: str | None = None, advice: str = "") -> Iterator[None]:
    """Run the reading of ``file`` (a ``kind`` file: "CSV", "Parquet", "JSON"); a file the library cannot read
    becomes one ``RetailSimInputError`` naming it (as ``name`` when given) and ending with ``advice`` (default:
    one that fits the failure, e.g. "save it as UTF-8").

    Keep the block to the reading itself: it is the boundary where a failure means "this file is bad"."""
    try:
        yield
    except RetailSimInputError:
        raise
    except _READ_FAILURES as error:
        problem, default_advice = _read_failure(error, file, kind)
        raise input_error(name or file, problem + (advice or default_advice)) from None


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """A file's bytes, decompressed when its name ends in .gz or .bz2 (as pyarrow's CSV reader does)."""
    return _TEXT_OPENERS.get(Path(path).suffix.lower(), open)(path, "rb")


def csv_header(path: str | os.PathLike) -> tuple[str, ...]:
    """The field names of a CSV file's first line (strict UTF-8, a byte-order mark skipped), stripped; () for an
    empty file. Only that line is decoded: a bad byte further down is the CSV reader's to name by line."""
    with reading(path, "CSV"), open_binary(path) as handle:
        line = handle.readline(_MAX_HEADER_CHARS).decode("utf-8-sig")
    return tuple(field.strip() for field in next(csv.reader([line]), []))


def week_span_error(file: str | os.PathLike, column: str, extreme: str, other: str, n_weeks: int, *,
                    row: int | None = None, line: int | None = None, hint: str = "") -> RetailSimInputError:
    """The data would span ``n_weeks`` > MAX_WEEKS weeks: name the far-out value (``extreme``, at file/row)."""
    return input_error(file, f"{extreme} and {other} span {n_weeks:,} weeks, more than the {MAX_WEEKS:,} weeks "
                       f"(about 38 years) one data set may cover{hint}", column=column, row=row, line=line)


def extreme_positions(keys: np.ndarray) -> tuple[int, int]:
    """(first index of the end value farther from the median, first index of the other end) of ``keys``."""
    low, high = int(np.argmin(keys)), int(np.argmax(keys))
    middle = float(np.median(keys))
    return (high, low) if float(keys[high]) - middle >= middle - float(keys[low]) else (low, high)


def require_columns(available: Iterable[str], required: Sequence[str], file: str | os.PathLike,
                    what: str = "required column") -> None:
    present = set(available)
    for name in required:
        if name not in present:
            raise input_error(file, f"the {what} is missing (columns found: {', '.join(sorted(present)) or 'none'})",
                              column=name)


def first_bad_number(values: pa.Array | pa.ChunkedArray, kind: str) -> int | None:
    """Index of the first non-empty value that does not parse as ``kind`` ("int" or "float"), else None."""
    parse = int if kind == "int" else float
    for index, value in enumerate(values.to_pylist()):
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        try:
            parse(value)
        except (TypeError, ValueError):
            return index
    return None


def cast_numeric(values: pa.ChunkedArray | pa.Array, kind: str, file: str | os.PathLike, column: str,
                 *, header_lines: int = 0, row_offset: int = 0) -> pa.ChunkedArray | pa.Array:
    """Cast a column to the canonical numeric type; an unparsable value names file, row and column."""
    target = ARROW_TYPES[kind]
    if values.type == target:
        return values
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.if_else(pc.equal(pc.utf8_trim_whitespace(values), ""), pa.scalar(None, values.type), values)
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = first_bad_number(values, kind)
        expected = "an integer" if kind == "int" else "a number"
        if bad is None:  # e.g. 2.5 in a float column where an integer is expected
            raise input_error(file, f"expected {expected}", column=column) from None
        row = row_offset + bad + 1
        raise input_error(file, f"expected {expected}, got {values[bad].as_py()!r}", column=column, row=row,
                          line=row + header_lines if header_lines else None) from None


def check_not_null(table: pa.Table, columns: Sequence[str], file: str | os.PathLike, source_names: dict[str, str],
                   *, header_lines: int = 0, row_offset: int = 0) -> None:
    """A required column may not have empty values; the error names the first empty row."""
    for name in columns:
        if name not in table.column_names:
            continue
        values = table.column(name)
        if values.null_count:
            bad = int(pc.index(pc.is_null(values), True).as_py())
            row = row_offset + bad + 1
            raise input_error(file, "a required value is empty", column=source_names.get(name, name), row=row,
                              line=row + header_lines if header_lines else None)


def check_range(values: pa.ChunkedArray, low: int, high: int, file: str | os.PathLike, column: str,
                *, header_lines: int = 0, row_offset: int = 0) -> None:
    outside = pc.or_(pc.less(values, low), pc.greater(values, high))
    if pc.any(outside).as_py():
        bad = int(pc.index(outside, True).as_py())
        row = row_offset + bad + 1
        raise input_error(file, f"expected a value from {low} to {high}, got {values[bad].as_py()}", column=column,
                          row=row, line=row + header_lines if header_lines else None)


def csv_parse_error(file: str | os.PathLike, error: Exception, expected_fields: int) -> RetailSimInputError:
    """Turn pyarrow's row-less CSV parse error into one naming the offending line (found on this slow path):
    the first line that is not UTF-8, else the first with the wrong number of fields."""
    if "UTF8" in str(error) or "UTF-8" in str(error):
        with reading(file, "CSV"), open_binary(file) as handle:
            for line_number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return input_error(file, "".join(_read_failure(bad, file, "CSV")), row=line_number - 1,
                                       line=line_number)
    with reading(file, "CSV"), io.TextIOWrapper(open_binary(file), encoding="utf-8-sig", errors="replace",
                                                newline="") as handle:
        for line_number, fields in enumerate(csv.reader(handle), start=1):
            if len(fields) != expected_fields and any(field.strip() for field in fields):
                return input_error(file, f"expected {expected_fields} fields, found {len(fields)}",
                                   row=line_number - 1, line=line_number)
    return input_error(file, f"the file is not valid CSV ({str(error).splitlines()[0]})")


def normalise_labels(table: pa.Table, counters: InputCounters) -> pa.Table:
    """Label columns keep only vocabulary values; others become the unknown label ("XX") and are counted.
    A missing (null) label is unknown too but is not counted: it is absent, not out of vocabulary."""
    for name, vocabulary in LABELS.items():
        if name not in table.column_names:
            continue
        values = table.column(name)
        known = pc.is_in(values, value_set=pa.array(vocabulary, pa.string()))
        outside = pc.and_(pc.invert(known), pc.is_valid(values))
        n_outside = int(pc.sum(outside).as_py() or 0)
        if n_outside or values.null_count:
            counters.unknown_labels += n_outside
            table = table.set_column(table.column_names.index(name), name,
                                     pc.if_else(known, values, pa.scalar(UNKNOWN_LABEL, pa.string())))
    return table


def drop_nonpositive_quantity(table: pa.Table, counters: InputCounters) -> pa.Table:
    if "quantity" not in table.column_names:
        return table
    nonpositive = pc.fill_null(pc.less_equal(table.column("quantity"), 0.0), False)
    n_dropped = int(pc.sum(nonpositive).as_py() or 0)
    if n_dropped:
        counters.nonpositive_quantity += n_dropped
        table = table.filter(pc.invert(nonpositive))
    return table


def collapse_duplicates(table: pa.Table, counters: InputCounters) -> pa.Table:
    """Identical lines (every column equal) collapse to their first occurrence; row order is kept.

    Only lines that share (basket, product, quantity, spend) with another line can be identical, so the full
    all-column comparison runs on those candidates alone (usually none or a few)."""
    if table.num_rows < 2:
        return table
    rows = np.arange(table.num_rows, dtype=np.int64)
    prefilter = [c for c in _DUPLICATE_PREFILTER if c in table.column_names] or table.column_names
    groups = table.select(prefilter).append_column("__row", pa.array(rows)).group_by(
        prefilter, use_threads=False).aggregate([("__row", "list")]).column("__row_list")
    if len(groups) == table.num_rows:
        return table
    shared = groups.filter(pc.greater(pc.list_value_length(groups), 1))
    candidates = np.sort(pc.list_flatten(shared).to_numpy())
    first = table.take(pa.array(candidates)).append_column("__row", pa.array(candidates)).group_by(
        table.column_names, use_threads=False).aggregate([("__row", "min")])
    n_duplicates = len(candidates) - first.num_rows
    if not n_duplicates:
        return table
    counters.duplicate_lines += n_duplicates
    keep = np.ones(table.num_rows, dtype=bool)
    keep[np.setdiff1d(candidates, first.column("__row_min").to_numpy())] = False
    return table.filter(pa.array(keep))


def finish_week(table: pa.Table, counters: InputCounters) -> pa.Table:
    """The tolerated repairs, in canonical column order and types (``table`` already has canonical names)."""
    table = table.select([c.name for c in CANONICAL_COLUMNS if c.name in table.column_names])
    table = table.cast(canonical_schema(table.column_names))
    table = normalise_labels(table, counters)
    table = drop_nonpositive_quantity(table, counters)
    return collapse_duplicates(table, counters)


def files_fingerprint(files: Sequence[Path], extra: str = "") -> str:
    """Hash of file names, sizes and modification times (cheap; content is not read)."""
    digest = hashlib.sha256(extra.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]

