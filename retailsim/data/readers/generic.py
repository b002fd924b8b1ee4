"""Your own transactions: a CSV or Parquet file, or a folder of them, with a column mapping (SPEC 3.1).

``mapping`` (the CLI's ``--map``) names the source column of a canonical column; columns already named
canonically map to themselves. Required: basket_id, customer_id, product_id and one notion of time, taken in
this order of preference (timekeys.py says how each becomes an ordinal week):
``week``, else ``timestamp``, else ``order_number`` per customer (optionally with ``days_since_prior_order``).
``weekday`` (0 = Monday) and ``hour`` come from their own columns when present, else from ``timestamp`` when
there is one. Every other canonical column is optional and simply absent from ``columns`` when the source lacks
it (no price -> no quantity/spend, no store -> no store_id, no hierarchy -> no category_*).

Streaming: the input is cut into chunks (a CSV file, or one Parquet row group). Opening the source reads only
the time columns of every chunk, to learn each chunk's first and last week; ``weeks()`` then reads each chunk
once, when its first week comes, and lets it go after its last week. Memory is therefore bounded by the chunks
whose week range covers the current week: one or two row groups for time-ordered Parquet or per-period CSV
files; the whole input (as typed Arrow columns, not text) for one unsorted CSV, unsorted Parquet or an
order-number sequence, whose weeks are all interleaved.

Opening the source also bounds the work: the ordinal weeks may span at most ``schema.MAX_WEEKS``, checked as
soon as the week index is known, so a stray value (week 100000000) is an error naming its file and row, not
a walk through millions of empty weeks. A ``week`` column of date-times is refused with a pointer to
``--map timestamp=COLUMN``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from retailsim.data.readers import timekeys, validation
from retailsim.data.schema import CANONICAL_COLUMNS, COLUMNS_BY_NAME, MAX_WEEKS, SOURCE_TIME_COLUMNS
from retailsim.data.sources import InputCounters

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")
_TIME_KINDS = {"timestamp": "timestamp", "order_number": "int", "days_since_prior_order": "float"}
_IDENTIFIERS = ("basket_id", "customer_id", "product_id")


@dataclass
class Chunk:
    path: Path
    row_group: int | None  # None: the whole CSV file
    row_offset: int  # rows of the file before this chunk, for error messages
    first_week: int = 0
    last_week: int = 0

    @property
    def header_lines(self) -> int:
        return 0 if self.row_group is not None else 1


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def discover_files(path: Path) -> list[Path]:
    if path.is_file():
        if not (_is_csv(path) or _is_parquet(path)):
            raise validation.input_error(path, "expected a .csv or .parquet file (or a folder of them)")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and (_is_csv(p) or _is_parquet(p)))
    if not files:
        raise validation.input_error(path, "no .csv or .parquet files in this folder")
    return files


def parquet_file(path: Path) -> pq.ParquetFile:
    with validation.reading(path, "Parquet"):
        return pq.ParquetFile(path)


def map_columns(files: list[Path], mapping: dict[str, str], names, flag: str) -> dict[str, str]:
    """name -> source column of the first file: the column ``mapping`` (the ``flag`` option) names, else the
    column of that name unless the mapping reads it as something else; a mapped column that the file lacks is
    an error naming the file and the column."""
    first = files[0]
    available = source_columns(first)
    sources: dict[str, str] = {}
    mapped = set(mapping.values())  # a column named by the mapping is read as what it says, nothing else
    for name in names:
        if name in mapping:
            if mapping[name] not in available:
                raise validation.input_error(first, f"the column mapped to {name} by {flag} is not in the file",
                                             column=mapping[name])
            sources[name] = mapping[name]
        elif name in available and name not in mapped:
            sources[name] = name
    return sources


def check_columns_in(files: list[Path], sources: dict[str, str]) -> None:
    """Every source column of ``sources`` in each of ``files``."""
    for path in files:
        columns = set(source_columns(path))
        for name, source in sources.items():
            if source not in columns:
                raise validation.input_error(path, f"the column (read as {name}) is missing from this file",
                                             column=source)


def file_chunks(files: list[Path], refuse_empty: bool) -> list[Chunk]:
    """One chunk per CSV file and per Parquet row group, with the file's rows before it; with ``refuse_empty``
    a Parquet file without rows is an error."""
    chunks = []
    for path in files:
        if _is_csv(path):
            chunks.append(Chunk(path, None, 0))
            continue
        metadata = parquet_file(path).metadata
        if refuse_empty and metadata.num_rows == 0:
            raise validation.input_error(path, "the file has no rows")
        offset = 0
        for group in range(metadata.num_row_groups):
            chunks.append(Chunk(path, group, offset))
            offset += metadata.row_group(group).num_rows
    return chunks


def read_raw(chunk: Chunk, columns: list[str]) -> pa.Table:
    """The source ``columns`` of one chunk as read: a CSV as strings (empty = null), Parquet as typed."""
    if chunk.row_group is None:
        with validation.reading(chunk.path, "CSV"):
            try:
                return pacsv.read_csv(chunk.path, convert_options=pacsv.ConvertOptions(
                    column_types={column: pa.string() for column in columns}, include_columns=columns,
                    null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))
            except pa.ArrowInvalid as error:
                raise validation.csv_parse_error(chunk.path, error, len(source_columns(chunk.path))) from None
    with validation.reading(chunk.path, "Parquet"):
        return pq.ParquetFile(chunk.path).read_row_group(chunk.row_group, columns=columns)


def source_columns(path: Path) -> tuple[str, ...]:
    if _is_parquet(path):
        return tuple(parquet_file(path).schema_arrow.names)
    if path.stat().st_size == 0:
        raise validation.input_error(path, "the file is empty (expected a header row and transaction lines)")
    header = validation.csv_header(path)
    if not any(header):
        raise validation.input_error(path, "the file is empty (expected a header row and transaction lines)")
    return header


class GenericSource:
    """A TransactionSource over CSV/Parquet files with a column mapping."""

    name = "generic"

    def __init__(self, path: str | Path, mapping: dict[str, str], promotions: str | Path | None = None,
                 promotions_mapping: dict[str, str] | None = None):
        self.path = Path(path)
        self.mapping = dict(mapping)
        self.files = discover_files(self.path)
        self.sources = self._resolve_columns()
        self.time_mode = next(name for name in ("week", "timestamp", "order_number") if name in self.sources)
        self.derived = tuple(name for name in ("weekday", "hour")
                             if name not in self.sources and "timestamp" in self.sources)
        unused = {"week": ("order_number", "days_since_prior_order"), "timestamp": ("order_number",
                  "days_since_prior_order"), "order_number": ()}[self.time_mode]
        if self.time_mode != "timestamp" and not self.derived:
            unused += ("timestamp",)
        for name in unused:  # time columns that will not be used are not read
            self.sources.pop(name, None)
        present = set(self.sources) | {"week"} | set(self.derived)
        self.columns = tuple(c.name for c in CANONICAL_COLUMNS if c.name in present)
        self.counters = InputCounters()
        self.chunks = self._chunks()
        self._index_weeks()
        self.plan = None
        if promotions is not None:   # generic_plan.py: the plan's weeks are read in these transactions' terms
            from retailsim.data.readers.generic_plan import GenericPlan

            self.plan = GenericPlan(promotions, promotions_mapping or {}, self)

    @property
    def week_lookup(self) -> dict[int, int]:
        """Raw week value -> ordinal week, for every value of a ``week`` column (week time only)."""
        return self._week_lookup

    @property
    def first_monday(self) -> int:
        """Days since 1970-01-01 of the Monday of week 1 (timestamp time only)."""
        return self._first_monday

    def promotion_plan(self) -> tuple[Iterator[pa.Table], Path] | None:
        """(the ``--promotions`` plan as canonical tables, its path), or None without one."""
        return None if self.plan is None else (self.plan.tables(), self.plan.path)

    # --- opening: columns, chunks, week index ---------------------------------------------------------------

    def _resolve_columns(self) -> dict[str, str]:
        """canonical (or time) name -> source column, checked against every file."""
        first = self.files[0]
        sources = map_columns(self.files, self.mapping, tuple(COLUMNS_BY_NAME) + SOURCE_TIME_COLUMNS, "--map")
        for name in _IDENTIFIERS:
            if name not in sources:
                raise validation.input_error(
                    first, f"the required column {name} is missing (name it with --map {name}=SOURCE_COLUMN)",
                    column=name)
        if not {"week", "timestamp", "order_number"} & set(sources):
            raise validation.input_error(
                first, "no time column: map one of week, timestamp or order_number with --map", column="week")
        check_columns_in(self.files[1:], sources)
        return sources

    def _chunks(self) -> list[Chunk]:
        return file_chunks(self.files, refuse_empty=True)

    def _index_weeks(self) -> None:
        """Read the time columns of every chunk to learn each chunk's week range (and n_weeks); a span over
        MAX_WEEKS is refused here, before any per-week work."""
        if self.time_mode == "week":
            uniques = []
            for chunk in self.chunks:
                weeks = self._read(chunk, ["week"]).column("week")
                uniques.append(pc.unique(weeks).to_numpy())
                chunk.first_week, chunk.last_week = (int(v) for v in pc.min_max(weeks).values())
            values = np.unique(np.concatenate(uniques))
            first, last = int(values[0]), int(values[-1])
            # The lookup is built over distinct values: fewer than MAX_WEEKS of them, or YYYYWW codes (a bounded
            # range); anything wider cannot fit and is refused without building it.
            if last - first < MAX_WEEKS or (first >= 190001 and last <= 220053):
                self._week_lookup = timekeys.week_numbers_to_ordinals(values)
                n_weeks = max(self._week_lookup.values())
            else:
                n_weeks = last - first + 1
            if n_weeks > MAX_WEEKS:
                raise self._week_span_error("week", lambda weeks: weeks.to_numpy(), n_weeks,
                                            "; expected ordinal week numbers or YYYYWW codes")
            for chunk in self.chunks:
                chunk.first_week, chunk.last_week = (self._week_lookup[chunk.first_week],
                                                     self._week_lookup[chunk.last_week])
        elif self.time_mode == "timestamp":
            for chunk in self.chunks:
                mondays = timekeys.monday_day_numbers(self._read(chunk, ["timestamp"]).column("timestamp"))
                chunk.first_week, chunk.last_week = int(mondays.min()), int(mondays.max())
            self._first_monday = min(chunk.first_week for chunk in self.chunks)
            n_weeks = (max(chunk.last_week for chunk in self.chunks) - self._first_monday) // 7 + 1
            if n_weeks > MAX_WEEKS:
                raise self._week_span_error("timestamp", timekeys.monday_day_numbers, n_weeks)
            for chunk in self.chunks:
                chunk.first_week = (chunk.first_week - self._first_monday) // 7 + 1
                chunk.last_week = (chunk.last_week - self._first_monday) // 7 + 1
        else:
            self._order_weeks = self._order_index()
            n_weeks = int(pc.max(self._order_weeks.column("week")).as_py())
            if n_weeks > MAX_WEEKS:
                longest = self._order_weeks.column("sequence")[int(np.argmax(self._order_weeks.column("week")))]
                time = "days_since_prior_order" if "days_since_prior_order" in self.sources else "order_number"
                raise validation.input_error(
                    self.path, f"the orders of customer {longest.as_py()!r} span {n_weeks:,} weeks, more than the "
                    f"{MAX_WEEKS:,} weeks (about 38 years) one data set may cover", column=self.sources[time])
            for chunk in self.chunks:  # order sequences interleave all weeks: every chunk stays open
                chunk.first_week, chunk.last_week = 1, n_weeks
        self._n_weeks = max(chunk.last_week for chunk in self.chunks)

    def _week_span_error(self, name: str, keys_of, n_weeks: int, hint: str = ""):
        """The error for a time column spanning ``n_weeks`` > MAX_WEEKS: the value at the end farther from the
        median (``keys_of`` maps a column to comparable week keys), with its file and row. Error path only: it
        reads the time column of every chunk again."""
        parts = [(chunk, self._read(chunk, [name]).column(name)) for chunk in self.chunks]
        keys = np.concatenate([np.asarray(keys_of(values), np.int64) for _, values in parts])
        starts = np.cumsum([0] + [len(values) for _, values in parts])

        def locate(position: int) -> tuple[Chunk, int, object]:
            part = int(np.searchsorted(starts, position, side="right")) - 1
            chunk, values = parts[part]
            return chunk, position - int(starts[part]), values[position - int(starts[part])].as_py()

        extreme, other = validation.extreme_positions(keys)
        chunk, index, value = locate(extreme)
        row = chunk.row_offset + index + 1
        what = "week" if name == "week" else "time"
        return validation.week_span_error(
            chunk.path, self.sources[name], f"{what} {value}", f"{what} {locate(other)[2]}", n_weeks, row=row,
            line=row + chunk.header_lines if chunk.header_lines else None, hint=hint)

    def _order_index(self) -> pa.Table:
        """(sequence key, order_number) -> week. Anonymous baskets are one-order sequences of their own."""
        names = ["customer_id", "basket_id", "order_number"] + (
            ["days_since_prior_order"] if "days_since_prior_order" in self.sources else [])
        orders = pa.concat_tables(self._read(chunk, names) for chunk in self.chunks)
        orders = orders.append_column("sequence", self._sequence_keys(orders)).select(
            ["sequence", "order_number"] + names[3:])
        aggregates = [("days_since_prior_order", "max")] if len(names) == 4 else []
        orders = orders.group_by(["sequence", "order_number"], use_threads=False).aggregate(aggregates)
        days = orders.column("days_since_prior_order_max").to_numpy(zero_copy_only=False) if aggregates else None
        weeks = timekeys.order_sequence_weeks(orders.column("sequence").to_numpy(zero_copy_only=False),
                                              orders.column("order_number").to_numpy(), days)
        return pa.table({"sequence": orders.column("sequence"), "order_number": orders.column("order_number"),
                         "week": pa.array(weeks)})

    @staticmethod
    def _sequence_keys(table: pa.Table) -> pa.ChunkedArray:
        anonymous = pc.binary_join_element_wise("\x00anonymous", table.column("basket_id"), "\x00")
        return pc.coalesce(table.column("customer_id"), anonymous)

    # --- reading one chunk ----------------------------------------------------------------------------------

    def _read(self, chunk: Chunk, names: list[str]) -> pa.Table:
        """Columns ``names`` (canonical/time names) of one chunk, typed, required values checked."""
        sources = [self.sources[name] for name in names]
        raw = read_raw(chunk, list(dict.fromkeys(sources)))
        if chunk.row_group is None and raw.num_rows == 0:
            raise validation.input_error(chunk.path, "the file has a header but no transaction lines")
        where = dict(header_lines=chunk.header_lines, row_offset=chunk.row_offset)
        columns = {}
        for name, source in zip(names, sources):
            values = raw.column(source)
            kind = _TIME_KINDS.get(name) or COLUMNS_BY_NAME[name].kind
            dates = timekeys.date_time_example(values) if name == "week" else None
            if dates is not None:
                raise validation.input_error(
                    chunk.path, f"the week column holds date-times ({dates}), not week numbers; read it as the "
                    f"time of each line with --map timestamp={source}", column=source)
            if kind == "timestamp":
                values = timekeys.to_timestamp(values, chunk.path, source, **where)
            elif kind == "str":
                values = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
            else:
                values = validation.cast_numeric(values, kind, chunk.path, source, **where)
            columns[name] = values
        table = pa.table(columns)
        required = [n for n in names if n in ("basket_id", "product_id", "week", "timestamp", "order_number")]
        validation.check_not_null(table, required, chunk.path, self.sources, **where)
        if "weekday" in names:
            validation.check_range(table.column("weekday"), 0, 6, chunk.path, self.sources["weekday"], **where)
        if "hour" in names:
            validation.check_range(table.column("hour"), 0, 23, chunk.path, self.sources["hour"], **where)
        if "days_since_prior_order" in names:  # a negative gap would put orders before week 1, out of the data
            validation.check_range(pc.fill_null(table.column("days_since_prior_order"), 0.0), 0, 7 * MAX_WEEKS,
                                   chunk.path, self.sources["days_since_prior_order"], **where)
        return table

    def _read_canonical(self, chunk: Chunk) -> pa.Table:
        """One chunk as canonical columns plus ``week``, its rows ordered by week (stable)."""
        table = self._read(chunk, list(self.sources))
        self.counters.rows_read += table.num_rows
        if self.time_mode == "week":
            week = timekeys.lookup(table.column("week"), self._week_lookup)
            table = table.set_column(table.column_names.index("week"), "week", week)
        elif self.time_mode == "timestamp":
            week = (timekeys.monday_day_numbers(table.column("timestamp")) - self._first_monday) // 7 + 1
            table = table.append_column("week", pa.array(week))
        else:
            table = table.append_column("sequence", self._sequence_keys(table))
            table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
            table = table.join(self._order_weeks, ["sequence", "order_number"], use_threads=False)
            table = table.take(pc.sort_indices(table.column("__row")))
        if "weekday" in self.derived:
            table = table.append_column("weekday", pc.cast(pc.day_of_week(table.column("timestamp")), pa.int64()))
        if "hour" in self.derived:
            table = table.append_column("hour", pc.cast(pc.hour(table.column("timestamp")), pa.int64()))
        table = table.select(list(self.columns))
        order = np.argsort(table.column("week").to_numpy(), kind="stable")
        return table.take(pa.array(order))

    # --- TransactionSource ----------------------------------------------------------------------------------

    def n_weeks(self) -> int:
        return self._n_weeks

    def fingerprint(self) -> str:
        plan = ((), "") if self.plan is None else (tuple(self.plan.files), f":plan={sorted(self.plan.sources.items())}")
        return validation.files_fingerprint(self.files + list(plan[0]),
                                            extra=f"{self.name}:{sorted(self.sources.items())}{plan[1]}")

    def weeks(self) -> Iterator[tuple[int, pa.Table]]:
        """Every week 1..n_weeks in order; a week with no lines (a gap in the data) yields an empty table."""
        schema = validation.canonical_schema(self.columns)
        pending = sorted(self.chunks, key=lambda chunk: chunk.first_week)
        open_chunks: list[tuple[Chunk, pa.Table, np.ndarray]] = []
        for week in range(1, self._n_weeks + 1):
            while pending and pending[0].first_week <= week:
                chunk = pending.pop(0)
                table = self._read_canonical(chunk)
                open_chunks.append((chunk, table, table.column("week").to_numpy()))
            parts = []
            for chunk, table, chunk_weeks in open_chunks:
                start, stop = np.searchsorted(chunk_weeks, [week, week + 1])
                if stop > start:
                    parts.append(table.slice(start, stop - start))
            open_chunks = [entry for entry in open_chunks if entry[0].last_week > week]
            lines = pa.concat_tables(parts) if parts else schema.empty_table()
            yield week, validation.finish_week(lines, self.counters)
