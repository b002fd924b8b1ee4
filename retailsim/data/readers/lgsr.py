"""Dunnhumby "Let's Get Sort-of-Real" (LGSR): a folder of weekly ``transactions_YYYYWW.csv`` files (SPEC 3.1).

Week files are read one at a time with explicit column types, so memory holds one week's parsed columns, never
the raw text of all weeks. The ordinal week of a file is the position of its YYYYWW code among the codes present
in the folder (1-based), so ``n_weeks`` is known from the file names alone; each file's SHOP_WEEK must match its
name. LGSR SHOP_WEEKDAY counts 1 = Sunday .. 7 = Saturday; the canonical weekday is 0 = Monday .. 6 = Sunday.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from retailsim.data.readers import validation
from retailsim.data.schema import CANONICAL_COLUMNS, LGSR_COLUMNS, LGSR_FILE_GLOB, LGSR_TO_CANONICAL
from retailsim.data.sources import InputCounters

WEEK_FILE_PATTERN = re.compile(r"^transactions_(\d{6})\.csv$")
_NUMERIC_TYPES = {"SHOP_WEEK": "int", "SHOP_WEEKDAY": "int", "SHOP_HOUR": "int", "QUANTITY": "float", "SPEND": "float"}
_COLUMN_TYPES = {name: validation.ARROW_TYPES[_NUMERIC_TYPES.get(name, "str")] for name in LGSR_COLUMNS}
_REQUIRED_LGSR = ("BASKET_ID", "PROD_CODE", "SHOP_WEEK", "SHOP_WEEKDAY", "SHOP_HOUR")


def lgsr_weekday_to_canonical(shop_weekday: pa.ChunkedArray) -> pa.ChunkedArray:
    """1 = Sunday .. 7 = Saturday  ->  0 = Monday .. 6 = Sunday."""
    return pc.cast(pc.remainder(pc.add(shop_weekday, 5), 7), pa.int64())


class LGSRSource:
    """A TransactionSource over an LGSR folder."""

    name = "lgsr"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise validation.input_error(self.folder, "expected a folder of LGSR week files transactions_YYYYWW.csv")
        candidates = sorted(self.folder.glob(LGSR_FILE_GLOB))
        if not candidates:
            raise validation.input_error(self.folder, "no LGSR week files (transactions_YYYYWW.csv) in this folder")
        files: dict[int, Path] = {}
        for path in candidates:
            match = WEEK_FILE_PATTERN.match(path.name)
            if match is None:
                raise validation.input_error(path, "an LGSR week file must be named transactions_YYYYWW.csv")
            if not path.is_file():
                found = "a folder" if path.is_dir() else "not a regular file"
                raise validation.input_error(path, f"expected an LGSR week file, found {found}")
            files[int(match.group(1))] = path
        self.week_codes = tuple(sorted(files))
        self.files = tuple(files[code] for code in self.week_codes)
        self.header = validation.csv_header(self.files[0])
        if not self.header or self.header == ("",):
            raise validation.input_error(self.files[0], "the file is empty (expected a header row and basket lines)")
        validation.require_columns(self.header, LGSR_COLUMNS, self.files[0], what="LGSR column")
        self.columns = tuple(c.name for c in CANONICAL_COLUMNS)
        self.counters = InputCounters()

    def n_weeks(self) -> int:
        return len(self.week_codes)

    def fingerprint(self) -> str:
        plan = self._plan_path()
        return validation.files_fingerprint(self.files + ((plan,) if plan else ()), extra=self.name)

    def _plan_path(self) -> Path | None:
        from retailsim.data import promotions   # promotions reads the week codes through this class

        return promotions.generator_plan_path(self.folder)

    def promotion_plan(self) -> tuple[Iterator[pa.Table], Path] | None:
        """(the folder's promotion plan as canonical tables, its file), or None: the generator writes one."""
        from retailsim.data import promotions

        path = self._plan_path()
        return None if path is None else (promotions.read_generator_plan(self.folder), path)

    def weeks(self) -> Iterator[tuple[int, pa.Table]]:
        for ordinal, (code, path) in enumerate(zip(self.week_codes, self.files), start=1):
            yield ordinal, self.read_week(ordinal, code, path)

    def read_week(self, ordinal: int, code: int, path: Path) -> pa.Table:
        header = validation.csv_header(path)
        if not header or header == ("",):
            raise validation.input_error(path, "the file is empty (expected a header row and basket lines)")
        if header != self.header:
            differing = next((f"{a!r} instead of {b!r}" for a, b in zip(header, self.header) if a != b),
                             f"{len(header)} columns instead of {len(self.header)}")
            raise validation.input_error(path, f"the header differs from {self.files[0].name}'s ({differing})")
        raw = self._read_csv(path)
        if raw.num_rows == 0:
            raise validation.input_error(path, "the file has a header but no basket lines")
        self.counters.rows_read += raw.num_rows
        where = dict(header_lines=1)
        validation.check_not_null(raw, _REQUIRED_LGSR, path, {}, **where)
        mismatched = pc.not_equal(raw.column("SHOP_WEEK"), code)
        if pc.any(mismatched).as_py():
            row = int(pc.index(mismatched, True).as_py()) + 1
            found = raw.column("SHOP_WEEK")[row - 1].as_py()
            raise validation.input_error(path, f"SHOP_WEEK {found} does not match the file name's week {code}",
                                         column="SHOP_WEEK", row=row, line=row + 1)
        validation.check_range(raw.column("SHOP_WEEKDAY"), 1, 7, path, "SHOP_WEEKDAY", **where)
        validation.check_range(raw.column("SHOP_HOUR"), 0, 23, path, "SHOP_HOUR", **where)
        table = pa.table({canonical: raw.column(lgsr) for lgsr, canonical in LGSR_TO_CANONICAL.items()})
        table = table.append_column("week", pa.array(np.full(raw.num_rows, ordinal, dtype=np.int64)))
        table = table.append_column("weekday", lgsr_weekday_to_canonical(raw.column("SHOP_WEEKDAY")))
        return validation.finish_week(table, self.counters)

    def _read_csv(self, path: Path) -> pa.Table:
        read_options = pacsv.ReadOptions(use_threads=True, block_size=1 << 24)
        convert_options = pacsv.ConvertOptions(
            column_types=_COLUMN_TYPES, include_columns=list(LGSR_COLUMNS), null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=True)
        with validation.reading(path, "CSV"):
            try:
                return pacsv.read_csv(path, read_options=read_options, convert_options=convert_options)
            except pa.ArrowInvalid as error:
                if "conversion error" not in str(error) or "UTF8" in str(error):
                    raise validation.csv_parse_error(path, error, len(self.header)) from None
                conversion_error = error
            # Slow path, only on bad input: read the numeric columns as text and name the first bad value.
            text_types = {name: pa.string() for name in _COLUMN_TYPES}
            raw = pacsv.read_csv(path, read_options=read_options, convert_options=pacsv.ConvertOptions(
                column_types=text_types, include_columns=list(_NUMERIC_TYPES), null_values=[""],
                strings_can_be_null=True))
        first_bad = []
        for name, kind in _NUMERIC_TYPES.items():
            bad = validation.first_bad_number(raw.column(name), kind)
            if bad is not None:
                first_bad.append((bad, name, kind))
        if not first_bad:  # pyarrow's conversion error lay elsewhere: let the slow line-by-line path name it
            raise validation.csv_parse_error(path, conversion_error, len(self.header))
        bad, name, kind = min(first_bad)
        raise validation.input_error(path, f"expected {'an integer' if kind == 'int' else 'a number'}, got "
                                     f"{raw.column(name)[bad].as_py()!r}", column=name, row=bad + 1, line=bad + 2)
