"""The interface between the input adapters and Stage 1: a stream of canonical transaction tables, one per
ordinal week, in ascending week order (SPEC 3.1)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Protocol

import pyarrow as pa


@dataclass
class InputCounters:
    """What an adapter tolerated and how often; printed in the stage summary and kept in metadata.json."""

    rows_read: int = 0
    duplicate_lines: int = 0  # identical basket lines, collapsed to one
    nonpositive_quantity: int = 0  # lines with quantity <= 0, dropped
    unknown_labels: int = 0  # label values outside schema.LABELS, mapped to the unknown label
    # One basket id on lines of several customers (anonymous lines count as one more) becomes one basket per
    # customer; this counts the extra baskets so made. Counted by Stage 1 (week_lines), which sees each week once.
    baskets_split_by_customer: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class TransactionSource(Protocol):
    """A transaction data set seen as canonical week tables.

    ``weeks()`` yields ``(week, table)`` with ``week`` the ordinal week (1-based) and ``table`` that week's basket
    lines, with the canonical columns of ``retailsim.data.schema`` that this source has (``columns``), typed as
    the schema says. Memory stays bounded by one week (plus the source's own index where its format needs one).
    Errors in the input raise ``RetailSimInputError`` naming file, row (where known) and column.
    """

    name: str
    columns: tuple[str, ...]
    counters: InputCounters

    def n_weeks(self) -> int:
        """Number of ordinal weeks (known before streaming, so Stage 1 can place the split)."""
        ...

    def weeks(self) -> Iterator[tuple[int, pa.Table]]: ...

    def fingerprint(self) -> str:
        """A short hash of the input's identity (file names, sizes, mtimes or content) for metadata.json."""
        ...
