"""In-memory TransactionSources and small hand-written data sets for the Stage 1/2 tests."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from retailsim.data.sources import InputCounters


class TableSource:
    """A TransactionSource over canonical lines given as a dict of columns (with a ``week`` column)."""

    name = "in-memory"

    def __init__(self, lines: dict, n_weeks: int | None = None) -> None:
        self.table = pa.table(lines)
        weeks = np.asarray(self.table.column("week"))
        self._n_weeks = n_weeks or int(weeks.max())
        self.columns = tuple(c for c in self.table.column_names)
        self.counters = InputCounters(rows_read=self.table.num_rows)

    def n_weeks(self) -> int:
        return self._n_weeks

    def weeks(self):
        weeks = np.asarray(self.table.column("week"))
        for week in range(1, self._n_weeks + 1):
            rows = np.flatnonzero(weeks == week)
            if len(rows):
                yield week, self.table.take(pa.array(rows))

    def fingerprint(self) -> str:
        return hashlib.sha1(str(self.table.num_rows).encode()).hexdigest()[:12]


def lines(*rows: tuple) -> dict:
    """Columns from (week, weekday, hour, basket, customer, product, quantity, spend, store) tuples."""
    names = ("week", "weekday", "hour", "basket_id", "customer_id", "product_id", "quantity", "spend", "store_id")
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    return {
        "basket_id": pa.array(columns["basket_id"], pa.string()),
        "customer_id": pa.array(columns["customer_id"], pa.string()),
        "product_id": pa.array(columns["product_id"], pa.string()),
        "week": pa.array(columns["week"], pa.int32()),
        "weekday": pa.array(columns["weekday"], pa.int8()),
        "hour": pa.array(columns["hour"], pa.int8()),
        "quantity": pa.array(columns["quantity"], pa.float64()),
        "spend": pa.array(columns["spend"], pa.float64()),
        "store_id": pa.array(columns["store_id"], pa.string()),
    }


def random_lines(seed: int, n_weeks: int = 20, n_customers: int = 30, n_products: int = 40,
                 baskets_per_week: int = 25) -> dict:
    """Random canonical lines: some anonymous baskets, duplicate products in a basket, varied prices."""
    rng = np.random.default_rng(seed)
    rows = []
    basket = 0
    for week in range(1, n_weeks + 1):
        for _ in range(baskets_per_week):
            basket += 1
            customer = None if rng.random() < 0.15 else f"C{rng.integers(n_customers):03d}"
            weekday, hour = int(rng.integers(7)), int(rng.integers(8, 22))
            store = f"S{rng.integers(3)}"
            for _ in range(int(rng.integers(1, 9))):
                product = f"P{int(rng.zipf(1.6)) % n_products:03d}"
                quantity = float(rng.integers(1, 4))
                spend = round(quantity * (1.0 + (hash(product) % 7) / 3) * rng.choice([1.0, 1.0, 0.8]), 2)
                rows.append((week, weekday, hour, f"B{basket:06d}", customer, product, quantity, spend, store))
    return lines(*rows)


# --- a tiny LGSR folder whose Stage 1/2 output is checked by hand in the tests ------------------------------
# (week, SHOP_WEEKDAY 1 = Sunday, hour, basket, customer or "" = anonymous, product, quantity, spend, store)
# Default split of 6 weeks: 1-4 train, 5 validation, 6 test. Training basket counts: A 4, B 3, C 2.
HAND_LINES = (
    (1, 2, 9, "B1", "CUST1", "A", 1, 2.00, "S1"),
    (1, 2, 9, "B1", "CUST1", "B", 2, 2.00, "S1"),
    (1, 3, 9, "B2", "", "A", 1, 2.00, "S1"),
    (1, 3, 9, "B2", "", "C", 1, 5.00, "S1"),
    (2, 2, 10, "B3", "CUST1", "C", 1, 5.00, "S1"),
    (2, 2, 10, "B3", "CUST1", "A", 1, 1.60, "S1"),
    (2, 4, 11, "B4", "CUST2", "B", 1, 1.00, "S2"),
    (3, 2, 12, "B10", "CUST2", "B", 1, 1.00, "S2"),
    (4, 2, 12, "B5", "CUST2", "A", 1, 2.00, "S1"),
    (5, 2, 12, "B6", "CUST1", "D", 1, 3.00, "S1"),
    (5, 2, 12, "B6", "CUST1", "A", 1, 2.00, "S1"),
    (6, 2, 10, "B7", "CUST3", "A", 2, 2.00, "S3"),
    (6, 2, 10, "B7", "CUST3", "E", 1, 4.00, "S3"),
    (6, 2, 15, "B8", "CUST3", "A", 1, 2.00, "S3"),
    (6, 5, 18, "B9", "CUST1", "B", 1, 1.00, "S2"),
)


def write_lgsr_folder(folder, lines=HAND_LINES) -> None:
    """LGSR week files transactions_2006WW.csv with the 22 LGSR columns."""
    import csv

    from retailsim.data.schema import LGSR_COLUMNS

    folder.mkdir(parents=True, exist_ok=True)
    weeks = sorted({line[0] for line in lines})
    for week in weeks:
        code = 200600 + week
        with open(folder / f"transactions_{code}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LGSR_COLUMNS)
            for w, weekday, hour, basket, customer, product, quantity, spend, store in lines:
                if w != week:
                    continue
                writer.writerow([
                    code, 20060100 + week, weekday, hour, quantity, spend, product, f"CL10{product}", "CL20",
                    "CL30", "CL40", customer, "LA" if customer else "", "YA" if customer else "", basket,
                    "S", "MM", "Top Up", "Fresh", store, "LS", "E01",
                ])


# --- bad-input checks shared by the guard tests --------------------------------------------------------------


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """The CLI printed one error line (no traceback) holding every fragment."""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def corrupt_file(path, how: str) -> None:
    """Damage a file in place: "truncated" (first half kept), "empty" (0 bytes), "flipped" (every byte but
    the first and last 8 inverted: header, pages and footer metadata garbled), "not-parquet" (CSV text)."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped":
        path.write_bytes(data[:8] + bytes(b ^ 0xFF for b in data[8:-8]) + data[-8:])
    elif how == "not-parquet":
        path.write_text("basket_id,customer_id,product_id,week\n1,a,x,1\n")
    else:
        raise ValueError(how)
