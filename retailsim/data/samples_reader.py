"""Reading a Stage 1 folder for Stage 2, checked as it is read: a split file that is not readable Parquet of
``SAMPLES_SCHEMA``, a ``vocab.json`` of the wrong shape, or an id outside the sizes ``metadata.json`` states (one
min/max per column and row group) is one error naming the file, column, row and value. Ids are never grown into:
a bad one means the folder is corrupt, and the message says to rerun prepare-samples.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retailsim.data import schema
from retailsim.data.readers.validation import reading
from retailsim.data.samples import CORRUPT_SAMPLES, SAMPLES_SCHEMA, corrupt_samples_error


def list_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(lengths int64 [n], flattened values) of a list column."""
    lengths = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)
    return lengths, pc.list_flatten(column)


def _reading_samples(path: Path, kind: str):
    return reading(path, kind, name=f"--samples {path}", advice=CORRUPT_SAMPLES)


def open_samples(path: Path) -> pq.ParquetFile:
    """A split file of the Stage 1 folder, its schema checked against SAMPLES_SCHEMA."""
    with _reading_samples(path, "Parquet"):
        parquet = pq.ParquetFile(path)
    found = parquet.schema_arrow
    for field in SAMPLES_SCHEMA:
        if field.name not in found.names:
            raise corrupt_samples_error(path, "this samples column is missing", column=field.name)
        if not found.field(field.name).type.equals(field.type):
            raise corrupt_samples_error(path, f"holds {found.field(field.name).type}, expected {field.type}",
                                        column=field.name)
    return parquet


def row_groups(path: Path, parquet: pq.ParquetFile, columns: list[str] | None = None):
    for index in range(parquet.num_row_groups):
        with _reading_samples(path, "Parquet"):
            group = parquet.read_row_group(index, columns=columns)
        yield group


def id_ranges(metadata: dict, split: str) -> dict[str, tuple[int, int, str]]:
    """column -> (lowest, highest, where the bounds come from) of every id column of ``split``'s samples."""
    week_first, week_last = metadata["split_weeks"][split]
    return {
        "customer_id": (0, metadata["n_customers"], "metadata.json n_customers"),
        "customer_key": (0, metadata["n_customer_keys"] - 1, "metadata.json n_customer_keys"),
        "store_id": (0, metadata["n_stores"], "metadata.json n_stores"),
        "store_region": (0, metadata["n_store_regions"], "metadata.json n_store_regions"),
        "items": (1, schema.unk_id(metadata["n_products"]), "product ids and UNK, metadata.json n_products"),
        "week": (week_first, week_last, f"metadata.json split_weeks {split}"),
        "week_of_year": (1, 52, "weeks of the year"),
        "weekday": (0, 6, "Monday..Sunday"),
        "hour": (0, 23, "hours of the day"),
        **{label: (0, len(values) - 1, f"schema.LABELS['{label}']") for label, values in schema.LABELS.items()},
    }


def check_id_ranges(group: pa.Table, ranges: dict, path: Path, rows_before: int) -> None:
    """Every id of one row group within its range, vectorised (one min/max per column); the error names the
    first row holding the offending value."""
    for name, (low, high, origin) in ranges.items():
        column = group.column(name)
        values = pc.list_flatten(column) if name == "items" else column
        if column.null_count or values.null_count:
            bad_row = int(pc.index(pc.is_null(column), True).as_py())
            raise corrupt_samples_error(path, "holds an empty value", column=name,
                                        row=rows_before + max(bad_row, 0) + 1)
        if len(values) == 0:
            continue
        bounds = pc.min_max(values)
        lowest, highest = bounds["min"].as_py(), bounds["max"].as_py()
        if low <= lowest and highest <= high:
            continue
        bad = lowest if lowest < low else highest
        row = int(pc.index(values, bad).as_py())
        if name == "items":  # the basket holding the item
            row = int(np.searchsorted(np.cumsum(list_parts(column)[0]), row, side="right"))
        raise corrupt_samples_error(path, f"holds {bad}, expected {low}..{high} ({origin})", column=name,
                                    row=rows_before + row + 1)


def read_vocab(path: Path, metadata: dict) -> dict[str, np.ndarray]:
    """vocab.json's per-product arrays, each checked against metadata.json's sizes (and the hierarchy ids
    against the number of category names)."""
    with _reading_samples(path, "JSON"):
        vocab = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict):
        raise corrupt_samples_error(path, f"expected a JSON object, found a {type(vocab).__name__}")
    size, n_products = metadata["vocab_size"], metadata["n_products"]
    for key, expected in (("n_products", n_products), ("vocab_size", size)):
        if vocab.get(key) != expected:
            raise corrupt_samples_error(path, f"{key} is {vocab.get(key)!r}, expected {expected} (metadata.json)")

    def listed(key: str, kinds: str, length: int, low: float | None = None, high: float | None = None,
               values=None, origin: str = "") -> np.ndarray:
        """``vocab[key]`` (or ``values``) as a 1-D array of ``length`` whose dtype kind is in ``kinds``."""
        values = vocab.get(key) if values is None else values
        expected = f"expected a list of {length} {'whole numbers' if kinds == 'iu' else 'numbers'}"
        if not isinstance(values, list) or len(values) != length:
            shown = f"{len(values)} entries" if isinstance(values, list) else f"a {type(values).__name__}"
            raise corrupt_samples_error(path, f"{key} holds {shown}, {expected}")
        array = np.asarray(values)
        if array.ndim != 1 or (length and array.dtype.kind not in kinds):
            allowed = int if kinds == "iu" else (int, float)
            bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, allowed)), values[0])
            raise corrupt_samples_error(path, f"{key} holds {bad!r}, {expected}")
        if length and ((low is not None and array.min() < low) or (high is not None and array.max() > high)):
            bad = array.min() if low is not None and array.min() < low else array.max()
            raise corrupt_samples_error(path, f"{key} holds {bad}, expected {low}..{high}{origin}")
        return array

    products = vocab.get("products")
    if not isinstance(products, list) or len(products) != n_products or not all(isinstance(p, str) for p in products):
        raise corrupt_samples_error(path, f"products is not a list of {n_products} product ids (metadata.json "
                                          f"n_products)")
    median = vocab.get("log_price_median")
    median = [np.nan if value is None else value for value in median] if isinstance(median, list) else median
    arrays = {"train_baskets": listed("train_baskets", "iu", size, low=0),
              "log_price_median": listed("log_price_median", "fiu", size, values=median).astype(np.float32)}
    categories = vocab.get("categories")
    category_ids = []
    for level in schema.HIERARCHY_COLUMNS:
        entry = categories.get(level) if isinstance(categories, dict) else None
        names = entry.get("names") if isinstance(entry, dict) else None
        if not isinstance(names, list):
            raise corrupt_samples_error(path, f"categories.{level} has no list of names")
        category_ids.append(listed(f"categories.{level}.ids", "iu", size, low=0, high=len(names),
                                   values=entry.get("ids"), origin=f" (0 or one of its {len(names)} names)"))
    arrays["category_ids"] = np.stack(category_ids, axis=1).astype(np.int32)
    return arrays
