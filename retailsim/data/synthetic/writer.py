"""Writing: one LGSR week file per week, built as an Arrow table and written by Arrow's CSV writer (the
output folder itself is made whole-or-nothing by ``retailsim.data.atomic_output``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from retailsim.data import schema
from retailsim.data.synthetic.calendar import shop_dates, shop_week_code
from retailsim.data.synthetic.catalogue import Catalogue
from retailsim.data.synthetic.labels import LABEL_VOCABULARY
from retailsim.data.synthetic.market import WeekMarket
from retailsim.data.synthetic.population import REGIONS, STORE_FORMATS, Customers, Stores
from retailsim.data.synthetic.shopping import WeekBaskets

BASKET_ID_BASE = 990_000_000_000_000  # LGSR-like 15-digit basket ids: base + week * 10^9 + trip number
BASKET_ID_WEEK_STRIDE = 1_000_000_000
GENERATOR_MARKER = "generator.json"


def week_file_name(week_index: int) -> str:
    return f"transactions_{shop_week_code(week_index)}.csv"


def basket_ids(week: WeekBaskets) -> np.ndarray:
    """int64 [T]: unique over the whole data set, increasing in time."""
    return BASKET_ID_BASE + week.week_index * BASKET_ID_WEEK_STRIDE + np.arange(week.n_trips, dtype=np.int64)


def _labels(vocabulary, indices: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(list(vocabulary), pa.string()))


def _spend_text(cents: np.ndarray) -> pa.Array:
    """Amounts with exactly two decimals ("3.05"), from integer cents (no float rounding surprises)."""
    pounds = pc.cast(pa.array(cents // 100), pa.string())
    pence = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), 2, "0")
    return pc.binary_join_element_wise(pounds, pence, ".")


def week_table(
    week: WeekBaskets,
    labels: dict[str, np.ndarray],
    catalogue: Catalogue,
    stores: Stores,
    customers: Customers,
) -> pa.Table:
    """The week's lines as the 22 LGSR columns, in ``schema.LGSR_COLUMNS`` order."""
    trip = week.line_trip
    line_customer = pa.array(week.trip_customer[trip])
    line_store = pa.array(week.trip_store[trip])
    line_product = pa.array(week.line_product)
    dates = np.array(shop_dates(week.week_index), dtype=np.int32)
    n = len(trip)
    columns = {
        "SHOP_WEEK": pa.array(np.full(n, shop_week_code(week.week_index), dtype=np.int32)),
        "SHOP_DATE": pa.array(dates[week.trip_weekday[trip] - 1]),
        "SHOP_WEEKDAY": pa.array(week.trip_weekday[trip]),
        "SHOP_HOUR": pa.array(week.trip_hour[trip]),
        "QUANTITY": pa.array(week.line_quantity),
        "SPEND": _spend_text(week.line_spend_cents),
        "PROD_CODE": catalogue.codes.take(line_product),
        "PROD_CODE_10": catalogue.level_codes[0].take(line_product),
        "PROD_CODE_20": catalogue.level_codes[1].take(line_product),
        "PROD_CODE_30": catalogue.level_codes[2].take(line_product),
        "PROD_CODE_40": catalogue.level_codes[3].take(line_product),
        "CUST_CODE": customers.codes.take(line_customer),
        "CUST_PRICE_SENSITIVITY": customers.price_band_label.take(line_customer),
        "CUST_LIFESTAGE": customers.lifestage_label.take(line_customer),
        "BASKET_ID": pa.array(basket_ids(week)[trip]),
    }
    for column, vocabulary in LABEL_VOCABULARY.items():
        columns[column] = _labels(vocabulary, labels[column][trip])
    columns["STORE_CODE"] = stores.codes.take(line_store)
    columns["STORE_FORMAT"] = _labels(STORE_FORMATS, stores.format[week.trip_store[trip]])
    columns["STORE_REGION"] = _labels(REGIONS, stores.region[week.trip_store[trip]])
    assert tuple(columns) == schema.LGSR_COLUMNS
    return pa.table(columns)


PROMOTION_SCHEMA = pa.schema([
    ("PROD_CODE", pa.string()), ("SHOP_WEEK", pa.int32()), ("DISCOUNT", pa.float64()), ("PRICE", pa.float64()),
])


def promotion_table(market: WeekMarket, catalogue: Catalogue) -> pa.Table:
    """The week's promotion plan: one row per promoted product, with the planned fraction off and the planned
    chain price (before a store's own price factor). It comes from the market draw, which precedes the week's
    shopping and depends on the seed and the catalogue alone."""
    promoted = np.flatnonzero(market.discount > 0)
    return pa.table({
        "PROD_CODE": catalogue.codes.take(pa.array(promoted)),
        "SHOP_WEEK": pa.array(np.full(len(promoted), shop_week_code(market.week_index), dtype=np.int32)),
        "DISCOUNT": pa.array(market.discount[promoted]),
        "PRICE": pa.array(market.price_cents[promoted] / 100.0),
    }, schema=PROMOTION_SCHEMA)


def write_week_csv(table: pa.Table, path: Path) -> int:
    """Write the table as an LGSR week file (plain header, no quotes); returns the file size in bytes."""
    with open(path, "wb") as sink:
        sink.write((",".join(schema.LGSR_COLUMNS) + "\n").encode())
        pa_csv.write_csv(
            table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none", batch_size=65536)
        )
    return path.stat().st_size


