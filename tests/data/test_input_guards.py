"""Stage 1 input guards: no hang on a far-out week, no traceback on an unreadable file, no silent merge of a basket
id shared by several customers. Every bad input is a RetailSimInputError naming the file (row and column where
known); through the verb it is one line, exit status 2, and no output folder (nor its hidden staging sibling)."""
from __future__ import annotations

import datetime as dt
import gzip
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailsim.cli import module_main
from retailsim.data import schema
from retailsim.data.readers import open_source, parse_mapping
from retailsim.data.readers.completejourney import CompleteJourneySource
from retailsim.data.samples import write_samples
from retailsim.data.week_lines import encode_week
from retailsim.data.week_spill import SpilledWeeks
from retailsim.errors import RetailSimInputError
from tests.data.stage_fixtures import (HAND_LINES, TableSource, assert_one_line_error, corrupt_file, lines,
                                       write_lgsr_folder)

REPO = Path(__file__).resolve().parents[2]
MINIMAL_HEADER = "basket_id,customer_id,product_id,week\n"


def prepare_samples(*argv):
    return module_main("retailsim.prepare_samples", [str(a) for a in argv])


def raises_input_error(call, *fragments: str) -> str:
    with pytest.raises(RetailSimInputError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def write_csv(path: Path, weeks) -> Path:
    path.write_text(MINIMAL_HEADER + "".join(f"{i},c{i % 3},p{i % 4},{w}\n" for i, w in enumerate(weeks)))
    return path


# --- 1. the ordinal week span is bounded, checked before any per-week work -------------------------------------


def test_huge_week_value_fails_at_once_through_the_real_command(tmp_path):
    path = write_csv(tmp_path / "orders.csv", [1, 2, 100_000_000])
    out = tmp_path / "s"
    done = subprocess.run([sys.executable, "-m", "retailsim.prepare_samples", "--input", str(path), "--out", str(out),
                           "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "orders.csv", "line 4 (row 3)", "column week", "week 100000000",
                          f"{schema.MAX_WEEKS:,} weeks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv"]


def test_week_span_limit_is_inclusive(tmp_path):
    assert open_source(write_csv(tmp_path / "longest.csv", [1, 5, schema.MAX_WEEKS])).n_weeks() == schema.MAX_WEEKS
    path = write_csv(tmp_path / "too_long.csv", [1, 5, schema.MAX_WEEKS + 1])
    raises_input_error(lambda: open_source(path), "too_long.csv", "row 3", "column week",
                       f"week {schema.MAX_WEEKS + 1} and week 1 span {schema.MAX_WEEKS + 1:,} weeks")


def test_the_far_out_end_is_the_one_named(tmp_path):
    path = write_csv(tmp_path / "orders.csv", [10, 11, 12, -5000, 13])  # the stray value is the lowest
    raises_input_error(lambda: open_source(path), "row 4", "week -5000 and week 13")


def test_mapped_week_column_names_its_source_column(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order,user,sku,WK\n1,a,x,1\n2,a,y,9999\n")
    mapping = parse_mapping("basket_id=order,customer_id=user,product_id=sku,week=WK")
    raises_input_error(lambda: open_source(path, "generic", mapping), "row 2", "column WK", "week 9999")


def test_timestamp_span_limit_names_the_far_out_time(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("basket_id,customer_id,product_id,timestamp\n1,a,x,2017-01-02 10:00:00\n"
                    "2,a,y,1970-01-01 00:00:00\n3,b,x,2017-02-01 09:00:00\n")
    raises_input_error(lambda: open_source(path), "orders.csv", "row 2", "column timestamp", "1970-01-01",
                       f"{schema.MAX_WEEKS:,} weeks")


def test_parquet_week_of_timestamps_points_to_map_timestamp(tmp_path):
    stamps = [dt.datetime(2017, 1, 2, 10), dt.datetime(2017, 1, 9, 11), dt.datetime(2017, 1, 20, 12)]
    path = tmp_path / "lines.parquet"
    pq.write_table(pa.table({"basket_id": ["1", "2", "3"], "customer_id": ["a", "b", "a"],
                             "product_id": ["x", "y", "z"], "week": pa.array(stamps, pa.timestamp("us"))}), path)
    raises_input_error(lambda: open_source(path), "lines.parquet", "column week", "date-times (timestamp[us])",
                       "--map timestamp=week")
    source = open_source(path, "generic", parse_mapping("timestamp=week"))  # the advice works as given
    assert source.n_weeks() == 3 and source.columns[-2:] == ("weekday", "hour")


def test_csv_week_of_dates_points_to_map_timestamp(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(MINIMAL_HEADER + "1,a,x,2017-01-02\n2,a,y,2017-01-09\n")
    raises_input_error(lambda: open_source(path), "column week", "'2017-01-02'", "--map timestamp=week")


def test_negative_days_since_prior_order_is_refused(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order_id,user_id,product_id,order_number,days_since_prior_order\n"
                    "10,u1,a,1,\n11,u1,a,2,-30\n")  # would put order 11 before week 1, out of the data
    mapping = parse_mapping("basket_id=order_id,customer_id=user_id")
    raises_input_error(lambda: open_source(path, "generic", mapping), "row 2", "column days_since_prior_order",
                       "-30")


def test_complete_journey_week_span():
    transactions = pa.table({"household_id": [1, 2, 3], "basket_id": [10, 11, 12], "product_id": [5, 6, 7],
                             "week": [1, 2, 5000]})
    raises_input_error(lambda: CompleteJourneySource(transactions, pa.table({"product_id": [5, 6, 7]})),
                       "transactions", "row 3", "column week", "week 5000")


def test_stage1_refuses_any_source_spanning_more_than_max_weeks(tmp_path):
    source = TableSource(lines((1, 0, 9, "B1", "X", "P", 1, 1.0, "S")), n_weeks=schema.MAX_WEEKS + 1)
    calls = []
    source.weeks = lambda: calls.append(1) or iter(())
    out = tmp_path / "s"
    out.mkdir()
    raises_input_error(lambda: write_samples(source, out, show_progress=False), "--input",
                       f"{schema.MAX_WEEKS + 1:,} weeks")
    assert calls == [] and list(out.iterdir()) == []


class _GappySource:
    """Weeks 1..6 with weeks 2-4 empty, as the readers yield gaps."""

    columns = ("basket_id", "customer_id", "product_id", "week")
    schema = pa.schema([("basket_id", pa.string()), ("customer_id", pa.string()), ("product_id", pa.string()),
                        ("week", pa.int64())])

    def weeks(self):
        for week in range(1, 7):
            n = 0 if 2 <= week <= 4 else 2
            yield week, pa.table({"basket_id": [f"B{week}"] * n, "customer_id": ["X"] * n,
                                  "product_id": ["P", "Q"][:n], "week": [week] * n}, schema=self.schema)


def test_empty_weeks_are_replayed_without_a_spill_file(tmp_path):
    spill = SpilledWeeks(_GappySource(), train_end=5, folder=tmp_path / "spill")
    first_pass = list(spill.training_weeks())
    assert [week for week, _ in first_pass] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == ["week_000001.arrow", "week_000005.arrow"]
    replay = list(spill.all_weeks())
    assert [week for week, _ in replay] == [1, 2, 3, 4, 5, 6]
    assert [table.num_rows for _, table in replay] == [2, 0, 0, 0, 2, 2]
    assert all(table.schema == _GappySource.schema for _, table in replay)


# --- 2. a basket id shared by several customers is split, never merged -----------------------------------------


def test_shared_basket_id_is_one_basket_per_customer():
    table = pa.table(lines(
        (1, 2, 10, "B1", "Y", "P1", 1, 1.0, "S"),
        (1, 2, 10, "B1", "X", "P1", 1, 1.0, "S"),
        (1, 2, 10, "B1", None, "P2", 1, 1.0, "S"),
        (1, 2, 10, "B1", "X", "P3", 1, 1.0, "S"),
        (1, 2, 10, "B0", "X", "P4", 1, 1.0, "S"),
    ))
    week = encode_week(1, table)
    assert week.n_baskets == 4 and week.baskets_split_by_customer == 2
    # time order ties: basket id, then customer id, the anonymous part last
    assert week.basket_ids.to_pylist() == ["B0", "B1", "B1", "B1"]
    assert week.basket_strings("customer_id") == ["X", "X", "Y", None]
    products = [[week.products[p] for b, p in zip(week.item_basket, week.item_product) if b == basket]
                for basket in range(4)]
    assert products == [["P4"], ["P1", "P3"], ["P1"], ["P2"]]
    unshared = encode_week(1, table.filter(pa.array([False, True, False, True, True])))
    assert unshared.n_baskets == 2 and unshared.baskets_split_by_customer == 0


def test_split_baskets_keep_separate_histories_and_are_counted(tmp_path):
    rows = [(1, 0, 9, "B1", "X", "P", 1, 1.0, "S"), (1, 0, 9, "B1", "Y", "Q", 1, 1.0, "S"),
            (2, 0, 9, "B2", "X", "P", 1, 1.0, "S"), (3, 0, 9, "B3", "Y", "P", 1, 1.0, "S"),
            (4, 0, 9, "B4", "X", "Q", 1, 1.0, "S")]
    out = tmp_path / "s"
    out.mkdir()
    metadata = write_samples(TableSource(lines(*rows)), out, n_products=5, split_weeks=(2, 3), show_progress=False)
    samples = [row for split in schema.SPLITS for row in pq.read_table(out / f"{split}.parquet").to_pylist()]
    shared = [row for row in samples if row["basket_id"] == "B1"]
    assert len(shared) == 2 and {row["customer_key"] for row in shared} == {1, 2}
    assert all(row["n_items_total"] == 1 and row["prior_baskets"] == 0 for row in shared)
    assert [(row["basket_id"], row["prior_baskets"]) for row in samples[2:]] == [("B2", 1), ("B3", 1), ("B4", 2)]
    assert metadata["source_counters"]["baskets_split_by_customer"] == 1


def test_split_count_is_in_the_verb_summary_and_metadata(tmp_path, capsys):
    write_lgsr_folder(tmp_path / "raw", HAND_LINES + ((1, 2, 9, "B1", "CUST2", "C", 1, 5.00, "S1"),))
    assert prepare_samples("--input", tmp_path / "raw", "--out", tmp_path / "s", "--quiet") == 0
    assert "baskets_split_by_customer=1" in capsys.readouterr().out
    assert '"baskets_split_by_customer": 1' in (tmp_path / "s" / "metadata.json").read_text()


# --- 3. unreadable files: one sentence naming the file, nothing left behind ------------------------------------


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped", "not-parquet"])
def test_unreadable_generic_parquet_is_one_line_and_leaves_nothing(tmp_path, capsys, how):
    path = tmp_path / "lines.parquet"
    pq.write_table(pa.table({"basket_id": ["1", "2", "3"], "customer_id": ["a", "b", "c"],
                             "product_id": ["x", "y", "z"], "week": [1, 2, 3]}), path)
    corrupt_file(path, how)
    assert prepare_samples("--input", path, "--out", tmp_path / "s", "--quiet") == 2
    assert_one_line_error(capsys.readouterr().err, f"{path}: the file is not a readable Parquet file (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.parquet"]


@pytest.mark.parametrize("table", ["transactions", "products", "demographics"])
def test_unreadable_complete_journey_table_names_it(tmp_path, table):
    from tests.data.test_readers import complete_journey_tables

    for name, contents in zip(("transactions", "products", "demographics"), complete_journey_tables()):
        pq.write_table(contents, tmp_path / f"{name}.parquet")
    corrupt_file(tmp_path / f"{table}.parquet", "truncated")
    raises_input_error(lambda: open_source(tmp_path), f"{table}.parquet", "not a readable Parquet file")


def test_binary_csv_is_not_utf8(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00\x10")
    raises_input_error(lambda: open_source(path), "orders.csv", "not UTF-8 text", "0x89", "save it as UTF-8")


def test_non_utf8_line_of_a_csv_is_named(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_bytes((MINIMAL_HEADER + "1,a,x,1\n2,caf\xe9,y,1\n3,b,z,2\n").encode("latin-1"))
    raises_input_error(lambda: list(open_source(path).weeks()), "orders.csv", "line 3 (row 2)", "not UTF-8",
                       "0xe9")


def test_non_utf8_lgsr_week_file_is_named_and_leaves_nothing(tmp_path, capsys):
    write_lgsr_folder(tmp_path / "raw")
    last = tmp_path / "raw" / "transactions_200606.csv"  # read in pass 2, after the staging folder is written
    last.write_bytes(last.read_bytes().replace(b"CUST3", b"CUST\xe9"))
    assert prepare_samples("--input", tmp_path / "raw", "--out", tmp_path / "s", "--quiet") == 2
    assert_one_line_error(capsys.readouterr().err, "transactions_200606.csv", "line 2 (row 1)", "not UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_lgsr_week_file_that_is_a_folder_is_refused_when_opening(tmp_path):
    write_lgsr_folder(tmp_path / "raw")
    week = tmp_path / "raw" / "transactions_200603.csv"
    week.unlink()
    week.mkdir()
    raises_input_error(lambda: open_source(tmp_path / "raw"), "transactions_200603.csv", "found a folder")


def test_gzipped_csv_header_is_read_decompressed(tmp_path):
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress((MINIMAL_HEADER + "1,a,x,1\n2,b,y,2\n").encode()))
    source = open_source(path)
    assert source.n_weeks() == 2 and [t.num_rows for _, t in source.weeks()] == [1, 1]
