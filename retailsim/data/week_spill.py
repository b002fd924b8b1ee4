"""Stage 1 reads its source once: the training weeks pass 1 parses are kept on disk and replayed in pass 2.

Parsing is the slowest part of Stage 1 (CSV text → typed columns), and the training weeks are ~68 % of the
data. Pass 1 writes each canonical training week it reads to an Arrow IPC file (LZ4-compressed, about a
tenth of the CSV's size) in a scratch folder; pass 2 reads those back, then continues the *same* week stream
with the validation and test weeks. Memory stays at one week; the source's counters count every line once.
A week without lines (a gap in the data) writes no file: it is replayed as an empty table of its schema.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa


class SpilledWeeks:
    def __init__(self, source, train_end: int, folder: Path) -> None:
        self._stream = iter(source.weeks())
        self.train_end = train_end
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._spilled: list[tuple[int, Path | None, pa.Schema]] = []  # path None: an empty week
        self._first_later_week: tuple[int, pa.Table] | None = None

    def training_weeks(self) -> Iterator[tuple[int, pa.Table]]:
        """Weeks 1..train_end of the source, each kept on disk for :meth:`all_weeks`."""
        for week, table in self._stream:
            if week > self.train_end:  # a source without the last training week: hand this one to pass 2
                self._first_later_week = (week, table)
                return
            path = None
            if table.num_rows:
                path = self.folder / f"week_{week:06d}.arrow"
                options = pa.ipc.IpcWriteOptions(compression="lz4")
                with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as out:
                    out.write_table(table)
            self._spilled.append((week, path, table.schema))
            yield week, table
            if week == self.train_end:
                return

    def all_weeks(self) -> Iterator[tuple[int, pa.Table]]:
        """Every week in order: the spilled training weeks (deleted once read), then the rest of the source."""
        for week, path, schema in self._spilled:
            if path is None:
                yield week, schema.empty_table()
                continue
            with pa.OSFile(str(path), "rb") as handle:
                table = pa.ipc.open_file(handle).read_all()
            path.unlink()
            yield week, table
        self._spilled = []
        if self._first_later_week is not None:
            yield self._first_later_week
            self._first_later_week = None
        yield from self._stream

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
