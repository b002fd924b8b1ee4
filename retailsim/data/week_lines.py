"""One week of canonical basket lines turned into NumPy arrays that both Stage 1 passes work on.

A basket is the lines of one basket id and one customer: a basket id shared by several customers (anonymous
lines being one more "customer") is split into one basket per customer, never merged, and each part keeps the
source's basket id string (``baskets_split_by_customer`` counts the extra baskets). Baskets are put in time order
(weekday, hour, then basket id, then customer id with the anonymous part last) and lines of the same product in
one basket are collapsed into one item (quantities and spends summed): a basket is a set of products.
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
    baskets_split_by_customer: int = 0  # baskets beyond one per basket id, made by splitting by customer

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

    id_strings, line_id, id_rank = _ranked_codes(table.column("basket_id"))
    _, line_customer, customer_rank = _ranked_codes(table.column("customer_id"))
    _, id_first_row = np.unique(line_id, return_index=True)
    if np.array_equal(line_customer, line_customer[id_first_row][line_id]):  # usual case: one customer per id
        line_basket, first_row, basket_rank = line_id, id_first_row, id_rank
    else:  # basket = (basket id, customer), ordered by id rank, then customer rank (anonymous last)
        customer_order = np.append(customer_rank, len(customer_rank))  # the null code ranks last
        pair_rank = id_rank[line_id] * len(customer_order) + customer_order[line_customer]
        basket_key, line_basket = np.unique(pair_rank, return_inverse=True)
        line_basket = line_basket.reshape(-1)
        basket_rank = np.arange(len(basket_key))  # basket_key is sorted
        _, first_row = np.unique(line_basket, return_index=True)
    n_baskets = len(first_row)
    basket_strings = id_strings.take(pa.array(line_id[first_row]))
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
        baskets_split_by_customer=n_baskets - len(id_strings),
    )


def _ranked_codes(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(distinct values as strings, int64 code of each line, sort rank of each distinct value) of an id column.

    Integer ids rank as numbers, others as strings. A null line gets the code len(values) (one past the last)."""
    column = column.combine_chunks()
    if pa.types.is_integer(column.type):
        values = pc.unique(column.drop_null()).sort()
        codes = pc.index_in(column, value_set=values)
        rank = np.arange(len(values), dtype=np.int64)
        values = values.cast(pa.string())
    else:
        encoded = pc.dictionary_encode(column.cast(pa.string()))
        values, codes = encoded.dictionary, encoded.indices
        rank = np.empty(len(values), dtype=np.int64)
        rank[pc.sort_indices(values).to_numpy()] = np.arange(len(values))
    line_codes = codes.fill_null(len(values)).to_numpy(zero_copy_only=False).astype(np.int64)
    return values, line_codes, rank
