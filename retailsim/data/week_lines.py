"""One week of canonical basket lines turned into NumPy arrays that both Stage 1 passes work on.

Baskets are put in time order (weekday, hour, then basket id) and lines of the same product in one basket are
collapsed into one item (quantities and spends summed): a basket is a set of products.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retailsim.data import schema
from retailsim.errors import RetailSimInputError


@dataclass
class WeekLines:
    week: int
    n_baskets: int
    basket_first_row: np.ndarray  # int64 [n_baskets], in time order: the row of the basket's first line
    basket_ids: pa.Array  # [n_baskets] basket ids as strings, time order
    weekday: np.ndarray  # int8 [n_baskets], 0 when the source has none
    hour: np.ndarray  # int8 [n_baskets]
    products: list  # week-local product strings; item_product indexes it
    product_first_row: np.ndarray  # int64 [n_local_products]: the first line of each week-local product
    item_basket: np.ndarray  # int64 [n_items], sorted by basket (time order) then local product code
    item_product: np.ndarray  # int64 [n_items] week-local product code
    item_quantity: np.ndarray  # float64 [n_items], NaN when the source has no quantity
    item_spend: np.ndarray  # float64 [n_items], NaN when the source has no spend
    table: pa.Table

    def basket_strings(self, column: str) -> list | None:
        """Per basket (time order), the value of a string column on its first line; None if absent."""
        if column not in self.table.column_names:
            return None
        values = self.table.column(column).take(pa.array(self.basket_first_row))
        return values.cast(pa.string()).to_pylist()

    def basket_label_ids(self, column: str) -> np.ndarray:
        """schema.label_id of each basket's value of ``column`` (0 = unknown or column absent)."""
        out = np.zeros(self.n_baskets, dtype=np.int8)
        if column not in self.table.column_names:
            return out
        values = self.table.column(column).take(pa.array(self.basket_first_row)).cast(pa.string())
        encoded = pc.dictionary_encode(values).combine_chunks()
        lookup = np.array([schema.label_id(column, v) for v in encoded.dictionary.to_pylist()] + [0], np.int8)
        codes = encoded.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False)
        return lookup[codes]

    def unit_prices(self) -> np.ndarray:
        """float64 [n_items] spend/quantity where both are > 0 and finite, else NaN."""
        with np.errstate(divide="ignore", invalid="ignore"):
            price = self.item_spend / self.item_quantity
        valid = (self.item_spend > 0) & (self.item_quantity > 0) & np.isfinite(price)
        return np.where(valid, price, np.nan)


def _int_column(table: pa.Table, name: str, rows: np.ndarray, week: int, low: int, high: int) -> np.ndarray:
    if name not in table.column_names:
        return np.zeros(len(rows), dtype=np.int8)
    values = table.column(name).take(pa.array(rows)).to_numpy(zero_copy_only=False)
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if bad.any():
        raise RetailSimInputError(
            f"column {name} of week {week} holds {values[bad][0]!r}; expected an integer in {low}..{high}."
        )
    return values.astype(np.int8)


def _float_column(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(), dtype=np.float64)


def encode_week(week: int, table: pa.Table) -> WeekLines:
    missing = [c for c in schema.REQUIRED_COLUMNS if c != "week" and c not in table.column_names]
    if missing:
        raise RetailSimInputError(f"week {week} of the input has no column {missing[0]} (a required column).")
    for name in ("basket_id", "product_id"):
        if table.column(name).null_count:
            raise RetailSimInputError(f"column {name} of week {week} has empty values; every line needs one.")

    basket_column = table.column("basket_id").combine_chunks()
    if pa.types.is_integer(basket_column.type):
        basket_sort_key, line_basket = np.unique(basket_column.to_numpy(), return_inverse=True)
        basket_rank = np.arange(len(basket_sort_key))
        basket_strings = pa.array(basket_sort_key).cast(pa.string())
    else:
        encoded = pc.dictionary_encode(basket_column.cast(pa.string()))
        line_basket = encoded.indices.to_numpy().astype(np.int64)
        basket_strings = encoded.dictionary
        basket_rank = np.empty(len(basket_strings), dtype=np.int64)
        basket_rank[pc.sort_indices(basket_strings).to_numpy()] = np.arange(len(basket_strings))
    n_baskets = len(basket_strings)
    _, first_row = np.unique(line_basket, return_index=True)
    weekday = _int_column(table, "weekday", first_row, week, 0, 6)
    hour = _int_column(table, "hour", first_row, week, 0, 23)

    time_order = np.lexsort((basket_rank, hour, weekday))  # baskets in time order
    basket_position = np.empty(n_baskets, dtype=np.int64)
    basket_position[time_order] = np.arange(n_baskets)

    products = pc.dictionary_encode(table.column("product_id").combine_chunks().cast(pa.string()))
    line_product = products.indices.to_numpy().astype(np.int64)
    n_local = max(1, len(products.dictionary))
    pair_key = basket_position[line_basket] * n_local + line_product
    pairs, line_pair = np.unique(pair_key, return_inverse=True)
    quantity = _float_column(table, "quantity")
    spend = _float_column(table, "spend")
    return WeekLines(
        week=week,
        n_baskets=n_baskets,
        basket_first_row=first_row[time_order],
        basket_ids=basket_strings.take(pa.array(time_order)),
        weekday=weekday[time_order],
        hour=hour[time_order],
        products=products.dictionary.to_pylist(),
        product_first_row=np.unique(line_product, return_index=True)[1],
        item_basket=pairs // n_local,
        item_product=pairs % n_local,
        item_quantity=np.bincount(line_pair, weights=quantity, minlength=len(pairs)),
        item_spend=np.bincount(line_pair, weights=spend, minlength=len(pairs)),
        table=table,
    )
