"""Stage 1 (SPEC 3.3): split, training-weeks-only statistics, vocabulary, history features, CLI errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from retailsim.cli import module_main
from retailsim.data import schema
from retailsim.data.samples import PROMO_DISCOUNT, resolve_split, write_samples
from retailsim.errors import RetailSimInputError
from tests.data.stage_fixtures import HAND_LINES, TableSource, lines, random_lines, write_lgsr_folder


def run_stage1(tmp_path, source, **kwargs):
    out = tmp_path / "samples"
    out.mkdir()
    metadata = write_samples(source, out, show_progress=False, **kwargs)
    tables = {split: pq.read_table(out / f"{split}.parquet").to_pylist() for split in schema.SPLITS}
    return metadata, json.loads((out / "vocab.json").read_text()), tables


def by_basket(tables):
    return {row["basket_id"]: row for rows in tables.values() for row in rows}


def prepare_samples(*argv):
    return module_main("retailsim.prepare_samples", [str(a) for a in argv])


@pytest.fixture
def lgsr_folder(tmp_path):
    folder = tmp_path / "raw"
    write_lgsr_folder(folder)
    return folder


# --- split ----------------------------------------------------------------------------------------------------


def test_default_split_is_lgsr_80_95_and_keeps_proportions():
    assert resolve_split(117, None) == (80, 95)
    assert resolve_split(60, None) == schema.split_boundaries(60)
    assert resolve_split(20, (10, 15)) == (10, 15)


@pytest.mark.parametrize("split_weeks", [(0, 5), (5, 5), (6, 5), (10, 20), (10, 19 + 1)])
def test_split_weeks_out_of_range_is_a_user_error(split_weeks):
    with pytest.raises(RetailSimInputError, match="--split-weeks"):
        resolve_split(20, split_weeks)


def test_baskets_land_in_the_split_of_their_week(tmp_path):
    metadata, _, tables = run_stage1(tmp_path, TableSource(random_lines(1)), n_products=10, split_weeks=(12, 15))
    assert {row["week"] for row in tables["train"]} == set(range(1, 13))
    assert {row["week"] for row in tables["validation"]} == {13, 14, 15}
    assert {row["week"] for row in tables["test"]} == set(range(16, 21))
    assert metadata["split_weeks"] == {"train": [1, 12], "validation": [13, 15], "test": [16, 20]}


# --- vocabulary and training-weeks-only statistics -------------------------------------------------------------


def test_vocabulary_ids_and_special_ids(tmp_path):
    source = TableSource(lines(*[line for line in _hand_canonical()]))
    _, vocab, tables = run_stage1(tmp_path, source, n_products=2)
    assert vocab["products"] == ["A", "B"]  # A in 4 training baskets, B in 3, C in 2 -> C is UNK
    assert (vocab["pad_id"], vocab["unk_id"], vocab["mask_id"], vocab["vocab_size"]) == (0, 3, 4, 5)
    assert vocab["train_baskets"] == [0, 4, 3, 2, 0]
    assert by_basket(tables)["B2"]["items"] == [1, 3]


def test_frequency_ties_are_broken_by_product_id(tmp_path):
    rows = [(1, 0, 9, f"B{i}", "X", p, 1, 1.0, "S") for i, p in enumerate(["Q", "P", "R"])]
    rows += [(w, 0, 9, f"W{w}", "X", "Z", 1, 1.0, "S") for w in (2, 3, 4)]
    _, vocab, _ = run_stage1(tmp_path, TableSource(lines(*rows)), n_products=3, split_weeks=(1, 2))
    assert vocab["products"] == ["P", "Q", "R"]


def test_product_first_seen_in_test_is_unk_and_test_prices_leave_medians_alone(tmp_path):
    source = TableSource(lines(*_hand_canonical()))
    _, vocab, tables = run_stage1(tmp_path, source, n_products=50)
    baskets = by_basket(tables)
    unk = vocab["unk_id"]
    assert vocab["n_products"] == 3 and unk == 4  # only A, B, C are sold in training: N is capped at 3
    assert "E" not in vocab["products"] and "D" not in vocab["products"]
    assert baskets["B7"]["items"][-1] == unk  # E appears in week 6 (test) only
    assert baskets["B6"]["items"][-1] == unk  # D appears in week 5 (validation) only
    # A sells at 2.00 in training (and 1.60 once) and at 1.00 in test: the median stays log(2).
    assert vocab["log_price_median"][vocab["products"].index("A") + 1] == pytest.approx(math.log(2.0), abs=1e-6)
    a_in_b7 = baskets["B7"]["item_log_price_rel"][0]
    assert a_in_b7 == pytest.approx(math.log(1.0 / 2.0), abs=1e-6)
    assert baskets["B7"]["item_promo"] == [1, 0] and baskets["B7"]["item_has_price"] == [1, 0]
    assert baskets["B3"]["item_promo"][0] == int(math.log(1.6 / 2.0) <= math.log(1 - PROMO_DISCOUNT))


def test_customers_and_stores_new_after_training_get_id_0_and_no_past(tmp_path):
    metadata, _, tables = run_stage1(tmp_path, TableSource(lines(*_hand_canonical())), n_products=50)
    b7, b8 = by_basket(tables)["B7"], by_basket(tables)["B8"]
    assert (b7["customer_id"], b7["store_id"], b7["prior_baskets"], b7["has_previous"]) == (0, 0, 0, 0)
    assert b7["customer_key"] == b8["customer_key"] == metadata["n_customers"] + 1 == 3
    assert (b8["prior_baskets"], b8["trips_this_week"]) == (1, 1)  # B7 earlier the same week


def test_anonymous_baskets_are_samples_but_never_history(tmp_path):
    rows = [(1, 0, 9, "A1", None, "P", 1, 1.0, "S"), (1, 0, 10, "N1", "X", "P", 1, 1.0, "S"),
            (2, 0, 9, "A2", None, "P", 1, 1.0, "S"), (2, 0, 10, "N2", "X", "P", 1, 1.0, "T"),
            (3, 0, 9, "N3", "X", "P", 1, 1.0, "S")]
    _, _, tables = run_stage1(tmp_path, TableSource(lines(*rows)), n_products=5, split_weeks=(1, 2))
    b = by_basket(tables)
    assert all(b[a]["customer_key"] == 0 and b[a]["prior_baskets"] == 0 for a in ("A1", "A2"))
    assert [b[n]["prior_baskets"] for n in ("N1", "N2", "N3")] == [0, 1, 2]
    assert [b[n]["store_switch"] for n in ("N1", "N2", "N3")] == [0, 1, 1]
    assert b["N2"]["days_since_previous"] == pytest.approx(7.0)


def test_history_features_match_a_python_replay(tmp_path):
    _, _, tables = run_stage1(tmp_path, TableSource(random_lines(3)), n_products=15)
    seen: dict[int, list] = {}
    for split in schema.SPLITS:
        for row in tables[split]:
            past = seen.setdefault(row["customer_key"], []) if row["customer_key"] else []
            assert row["prior_baskets"] == len(past)
            assert row["trips_this_week"] == sum(1 for p in past if p["week"] == row["week"])
            if past:
                assert row["prior_mean_basket_size"] == pytest.approx(np.mean([p["n_items_total"] for p in past]))
                assert row["store_switch"] == int(past[-1]["store_id"] != row["store_id"])
            if row["customer_key"]:
                past.append(row)


def test_long_baskets_keep_the_most_popular_items(tmp_path):
    products = [f"P{i:03d}" for i in range(60)]
    rows = [(1, 0, 9, f"F{i}_{j}", "X", p, 1, 1.0, "S") for i, p in enumerate(products) for j in range(60 - i)]
    rows += [(2, 0, 9, "BIG", "X", p, 1, 1.0, "S") for p in reversed(products)] + [(3, 0, 9, "T", "X", "P000", 1, 1.0, "S")]
    _, vocab, tables = run_stage1(tmp_path, TableSource(lines(*rows)), n_products=100, split_weeks=(1, 2))
    big = by_basket(tables)["BIG"]
    assert big["n_items_total"] == 60 and big["items"] == list(range(1, schema.MAX_BASKET_ITEMS + 1))


def test_metadata_records_sizes_fingerprint_and_columns(tmp_path):
    metadata, _, tables = run_stage1(tmp_path, TableSource(random_lines(4)), n_products=10)
    assert metadata["input_fingerprint"] and "product_id" in metadata["columns_present"]
    assert sum(s["baskets"] for s in metadata["splits"].values()) == sum(len(t) for t in tables.values())
    assert metadata["n_customer_keys"] - 1 >= metadata["n_customers"]


# --- the verb: arguments, errors, output folder ----------------------------------------------------------------


def test_lgsr_folder_through_the_verb(tmp_path, lgsr_folder, capsys):
    assert prepare_samples("--input", lgsr_folder, "--out", tmp_path / "s", "--n-products", 2, "--quiet") == 0
    summary = capsys.readouterr().out
    assert "15 rows -> 10 baskets" in summary and "tolerated input" in summary
    metadata = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert metadata["split_weeks"]["train"] == [1, 4] and metadata["source_counters"]["rows_read"] == len(HAND_LINES)


@pytest.mark.parametrize("argv, message", [
    (["--split-weeks", "4"], "--split-weeks '4': expected two integers"),
    (["--split-weeks", "a,b"], "--split-weeks 'a,b'"),
    (["--split-weeks", "4,6"], "--split-weeks 4,6: expected 1 <= TRAIN_END < VAL_END < 6"),
    (["--split-weeks", "3,2"], "--split-weeks 3,2"),
    (["--n-products", "0"], "--n-products 0: expected at least 1"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, lgsr_folder, capsys, argv, message):
    out = tmp_path / "s"
    assert prepare_samples("--input", lgsr_folder, "--out", out, "--quiet", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [lgsr_folder]


def test_missing_input_is_a_user_error(tmp_path, capsys):
    assert prepare_samples("--input", tmp_path / "nope", "--out", tmp_path / "s") == 2
    assert "--input" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert prepare_samples("--out", tmp_path / "s", "--format", "lgsr") == 2
    assert "--input is required" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, lgsr_folder, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert prepare_samples("--input", lgsr_folder, "--out", out, "--quiet") == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert prepare_samples("--input", lgsr_folder, "--out", out, "--quiet", "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "metadata.json").exists()


def test_error_mid_stream_leaves_no_partial_output(tmp_path, lgsr_folder, capsys):
    bad = lgsr_folder / "transactions_200606.csv"  # the last (test) week: pass 2 fails after writing weeks 1-5
    text = bad.read_text().splitlines()
    fields = text[1].split(",")
    fields[4] = "lots"  # QUANTITY
    bad.write_text("\n".join(text[:1] + [",".join(fields)] + text[2:]) + "\n")
    out = tmp_path / "s"
    assert prepare_samples("--input", lgsr_folder, "--out", out, "--quiet") == 2
    assert "QUANTITY" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # neither out nor its temporary sibling


def _hand_canonical():
    """HAND_LINES as canonical rows (weekday 0 = Monday, anonymous = None)."""
    return [(w, (d + 5) % 7, h, b, c or None, p, q, s, st) for w, d, h, b, c, p, q, s, st in HAND_LINES]


def test_source_is_read_once_and_a_missing_last_training_week_loses_nothing(tmp_path):
    rows = [(w, 0, 9, f"B{w}", "X", "P", 1, 1.0, "S") for w in (1, 2, 4, 5, 6)]  # no week 3 = the last training week
    source = TableSource(lines(*rows), n_weeks=6)
    calls = []
    weeks = source.weeks
    source.weeks = lambda: calls.append(1) or weeks()
    metadata, _, tables = run_stage1(tmp_path, source, n_products=5, split_weeks=(3, 4))
    assert len(calls) == 1
    assert [r["week"] for r in tables["train"]] == [1, 2] and [r["week"] for r in tables["validation"]] == [4]
    assert [r["prior_baskets"] for split in schema.SPLITS for r in tables[split]] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "metadata.json", "test.parquet", "train.parquet", "validation.parquet", "vocab.json"]
