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
