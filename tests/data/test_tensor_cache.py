"""Stage 2 (SPEC 3.4): LGSR → Stage 1 → Stage 2 round trip checked by hand, history leakage, manifest, errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from retailsim.cli import module_main
from retailsim.data import schema
from retailsim.data.samples import write_samples
from retailsim.data.cache_reader import TensorCache
from retailsim.data.tensor_cache import write_tensor_cache
from tests.data.stage_fixtures import TableSource, random_lines, write_lgsr_folder


def verb(module, *argv):
    return module_main(f"retailsim.{module}", [str(a) for a in argv])


@pytest.fixture
def hand_cache(tmp_path):
    """The hand-written LGSR folder through both verbs, vocabulary A=1, B=2, UNK=3."""
    write_lgsr_folder(tmp_path / "raw")
    assert verb("prepare_samples", "--input", tmp_path / "raw", "--out", tmp_path / "s", "--n-products", 2, "--quiet") == 0
    assert verb("prepare_tensor_cache", "--samples", tmp_path / "s", "--out", tmp_path / "c", "--quiet") == 0
    return tmp_path


def basket(cache, split, basket_id):
    ids = [r["basket_id"] for r in pq.read_table(cache / "s" / f"{split}.parquet", columns=["basket_id"]).to_pylist()]
    arrays = TensorCache.open(cache / "c").split_arrays(split)
    b = ids.index(basket_id)
    lo, hi = arrays["basket_item_offsets"][b], arrays["basket_item_offsets"][b + 1]
    return {
        "items": arrays["item_ids"][lo:hi].tolist(),
        "price": arrays["item_price"][lo:hi],
        "history": arrays["stream_items"][arrays["history_start"][b]:arrays["history_end"][b]].tolist(),
        "history_weeks": arrays["stream_weeks"][arrays["history_start"][b]:arrays["history_end"][b]].tolist(),
        "history_before_week": arrays["stream_items"][arrays["history_start"][b]:arrays["history_end_week"][b]].tolist(),
        **{name: arrays[name][b].tolist() for name in ("customer_id", "customer_key", "store_id", "week", "weekday",
                                                        "hour", "prior_baskets", "bucket", "trips_this_week",
                                                        "store_switch", "labels")},
    }


def test_round_trip_by_hand(hand_cache):
    b3 = basket(hand_cache, "train", "B3")  # CUST1's 2nd trip: A at 1.60 (median 2.00) and C (UNK)
    assert b3["items"] == [1, 3] and b3["history"] == [1, 2] and b3["history_weeks"] == [1, 1]
    assert b3["price"][:, 0] == pytest.approx([np.log(0.8), 0.0], abs=1e-6)
    assert b3["price"][:, 1:].tolist() == [[1, 1], [0, 1]]  # promo, has price (C is UNK with its own median)
    assert (b3["customer_id"], b3["week"], b3["weekday"], b3["hour"], b3["prior_baskets"]) == (1, 2, 0, 10, 1)
    assert b3["labels"] == [schema.label_id(c, v) for c, v in zip(schema.LABEL_TARGETS, ("S", "MM", "Top Up", "Fresh"))]

    b9 = basket(hand_cache, "test", "B9")  # CUST1 in the test week: every earlier basket, splits included
    assert b9["history"] == [1, 2, 1, 3, 1, 3] and b9["history_weeks"] == [1, 1, 2, 2, 5, 5]
    assert (b9["prior_baskets"], b9["bucket"], b9["store_id"], b9["store_switch"]) == (3, 1, 2, 1)

    b7, b8 = basket(hand_cache, "test", "B7"), basket(hand_cache, "test", "B8")  # CUST3, new in test
    assert b7["history"] == [] and (b7["customer_id"], b7["prior_baskets"], b7["bucket"]) == (0, 0, 0)
    assert b8["history"] == [1, 3] and b8["history_before_week"] == [] and b8["trips_this_week"] == 1
    assert b8["customer_key"] == b7["customer_key"] == 3

    b2 = basket(hand_cache, "train", "B2")  # anonymous
    assert b2["customer_key"] == 0 and b2["history"] == []
    streams = TensorCache.open(hand_cache / "c").split_arrays("train")
    assert streams["stream_offsets"].tolist() == [0, 0, 7, 10, 13]  # CUST1 7 items, CUST2 3, CUST3 3; B2 nowhere


def test_manifest_describes_every_array_and_all_are_memory_mappable(hand_cache):
    manifest = json.loads((hand_cache / "c" / "cache.json").read_text())
    assert (manifest["pad_id"], manifest["unk_id"], manifest["mask_id"], manifest["vocab_size"]) == (0, 3, 4, 5)
    for name, entry in manifest["arrays"].items():
        array = np.load(hand_cache / "c" / entry["path"], mmap_mode="r")
        assert isinstance(array, np.memmap), name
        assert (str(array.dtype), list(array.shape)) == (entry["dtype"], entry["shape"]), name
        assert entry["meaning"]
    for split in schema.SPLITS:
        arrays = TensorCache.open(hand_cache / "c").split_arrays(split)
        n = manifest["splits"][split]["n_baskets"]
        assert arrays["basket_item_offsets"][-1] == len(arrays["item_ids"]) == manifest["splits"][split]["n_items"]
        assert all(len(arrays[k]) == n for k in ("week", "labels", "bucket", "history_end"))
    vocab = TensorCache.open(hand_cache / "c").split_arrays("test")
    assert vocab["product_category"].shape == (5, 4) and vocab["product_train_baskets"].tolist() == [0, 4, 3, 2, 0]


@pytest.mark.parametrize("use_native", [None, False], ids=["default-kernel", "numpy-twin"])
def test_history_never_holds_the_basket_or_anything_later(tmp_path, use_native):
    samples, cache = tmp_path / "s", tmp_path / "c"
    samples.mkdir()
    cache.mkdir()
    write_samples(TableSource(random_lines(7, n_weeks=15, n_customers=12)), samples, n_products=12, show_progress=False)
    write_tensor_cache(samples, cache, show_progress=False, use_native=use_native)
    replay: dict[int, list[tuple[int, list]]] = {}  # key -> [(week, items)] of earlier baskets
    for split in schema.SPLITS:
        rows = pq.read_table(samples / f"{split}.parquet").to_pylist()
        arrays = TensorCache.open(cache).split_arrays(split)
        for b, row in enumerate(rows):
            start, end, end_week = (int(arrays[k][b]) for k in ("history_start", "history_end", "history_end_week"))
            past = replay.setdefault(row["customer_key"], []) if row["customer_key"] else []
            expected = [item for _, items in past for item in items]
            assert arrays["stream_items"][start:end].tolist() == expected
            assert arrays["stream_weeks"][start:end].tolist() == [w for w, items in past for _ in items]
            assert end - start == sum(len(items) for _, items in past)
            assert (arrays["stream_weeks"][start:end_week] < row["week"]).all()
            assert (arrays["stream_weeks"][end_week:end] == row["week"]).all()
            assert row["prior_baskets"] == len(past)
            if row["customer_key"]:
                past.append((row["week"], row["items"]))


def test_not_a_stage1_folder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metadata.json").write_text("{}")
    for samples in (tmp_path / "junk", tmp_path / "missing"):
        assert verb("prepare_tensor_cache", "--samples", samples, "--out", tmp_path / "c") == 2
        err = capsys.readouterr().err
        assert "--samples" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_incomplete_stage1_folder_leaves_no_output(hand_cache, capsys):
    (hand_cache / "s" / "test.parquet").unlink()
    assert verb("prepare_tensor_cache", "--samples", hand_cache / "s", "--out", hand_cache / "c2") == 2
    assert "test.parquet is missing" in capsys.readouterr().err
    assert not any(p.name.startswith((".c2", "c2")) for p in hand_cache.iterdir())


def test_failure_while_writing_removes_the_temporary_folder(hand_cache, monkeypatch):
    from retailsim.data import tensor_cache

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tensor_cache, "_write_vocab_arrays", broken)
    # the CLI reports the system's refusal in one line (exit 2) after the clean-up
    assert verb("prepare_tensor_cache", "--samples", hand_cache / "s", "--out", hand_cache / "c", "--overwrite",
                "--quiet") == 2
    assert (hand_cache / "c" / "cache.json").exists()  # the previous cache is untouched
    assert not [p for p in hand_cache.iterdir() if p.name.startswith(".")]


def test_retailsim_command_runs_both_verbs_and_documents_every_flag(tmp_path, capsys):
    from retailsim.cli import main

    write_lgsr_folder(tmp_path / "raw")
    assert main(["prepare-samples", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert main(["prepare-tensor-cache", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "c"), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "prepare-samples: 15 rows -> 10 baskets" in summary and "prepare-tensor-cache: 10 baskets" in summary
    for verb_name, flags in (("prepare-samples", ("--input", "--out", "--format", "--map", "--n-products",
                                                  "--split-weeks", "--overwrite", "--quiet")),
                             ("prepare-tensor-cache", ("--samples", "--out", "--overwrite", "--quiet"))):
        with pytest.raises(SystemExit):
            main([verb_name, "--help"])
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags)
        assert verb_name != "prepare-samples" or "(default: 5000)" in text
