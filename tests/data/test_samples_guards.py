"""Stage 2's reading of a Stage 1 folder: an unreadable or wrong-shaped file, or an id outside the sizes
metadata.json states, is one RetailSimInputError naming the file (column, row and value where it applies), and
prepare-tensor-cache leaves no output folder behind."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retailsim.cli import module_main
from retailsim.data.samples import read_metadata, write_samples
from retailsim.data.tensor_cache import write_tensor_cache
from retailsim.errors import RetailSimInputError
from tests.data.stage_fixtures import TableSource, assert_one_line_error, corrupt_file, random_lines


@pytest.fixture(scope="module")
def good_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "s"
    folder.mkdir()
    write_samples(TableSource(random_lines(11, n_weeks=12, n_customers=20)), folder, n_products=15,
                  show_progress=False)
    return folder


@pytest.fixture
def samples(tmp_path, good_samples):
    """A private copy of a good Stage 1 folder, to damage."""
    return shutil.copytree(good_samples, tmp_path / "s")


def edit_json(path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def set_value(path, column: str, row: int, value) -> None:
    """Rewrite one value of a samples file (for ``items``: the basket's last item)."""
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = values[row][:-1] + [value] if column == "items" else value
    pq.write_table(table.set_column(table.column_names.index(column), column,
                                    pa.array(values, table.schema.field(column).type)), path)


def stage2_error(samples, tmp_path, *fragments: str) -> str:
    out = tmp_path / "c"
    out.mkdir()
    with pytest.raises(RetailSimInputError) as error:
        write_tensor_cache(samples, out, show_progress=False)
    message = str(error.value)
    assert "\n" not in message and "the samples folder is corrupt, rerun prepare-samples" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --- split files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, how", [("train", "truncated"), ("validation", "empty"), ("test", "not-parquet"),
                                        ("train", "flipped")])
def test_unreadable_split_file_is_one_line_and_leaves_nothing(samples, tmp_path, capsys, split, how):
    corrupt_file(samples / f"{split}.parquet", how)
    argv = ["--samples", str(samples), "--out", str(tmp_path / "c"), "--quiet"]
    assert module_main("retailsim.prepare_tensor_cache", argv) == 2
    assert_one_line_error(capsys.readouterr().err, f"--samples {samples / split}.parquet: the file is not a "
                          "readable Parquet file (", "rerun prepare-samples")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_split_file_of_another_schema_names_the_column(samples, tmp_path):
    table = pq.read_table(samples / "test.parquet")
    pq.write_table(table.set_column(table.column_names.index("store_id"), "store_id",
                                    table.column("store_id").cast(pa.int64())), samples / "test.parquet")
    stage2_error(samples, tmp_path, "test.parquet", "column store_id", "holds int64, expected int32")


# --- ids against metadata.json, never grown into ---------------------------------------------------------------


@pytest.mark.parametrize("split, column, value, expected", [
    ("train", "store_id", 1_000_000, "expected 0..3 (metadata.json n_stores)"),
    ("validation", "customer_id", -1, "(metadata.json n_customers)"),
    ("test", "customer_key", 10_000, "(metadata.json n_customer_keys)"),
    ("train", "store_region", 1, "expected 0..0 (metadata.json n_store_regions)"),
    ("test", "items", 0, "expected 1..16 (product ids and UNK"),  # PAD
    ("train", "items", 17, "expected 1..16 (product ids and UNK"),  # MASK
    ("train", "basket_size", 9, "expected 0..3 (schema.LABELS['basket_size'])"),
    ("test", "store_format", 7, "expected 0..4"),
    ("validation", "week", 1, "(metadata.json split_weeks validation)"),
    ("test", "hour", 24, "expected 0..23"),
], ids=["store_id", "customer_id", "customer_key", "store_region", "items-pad", "items-mask", "basket_size",
        "store_format", "week", "hour"])
def test_id_outside_its_metadata_range_names_file_column_and_value(samples, tmp_path, split, column, value,
                                                                    expected):
    set_value(samples / f"{split}.parquet", column, 4, value)
    stage2_error(samples, tmp_path, f"{split}.parquet, row 5, column {column}: holds {value}, expected ", expected)


# --- vocab.json and metadata.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("damage, fragment", [
    (lambda path: path.write_text("{not json"), "not valid JSON"),
    (lambda path: path.write_bytes(b"\xff\xfe\x00garbage"), "not UTF-8 text"),
    (lambda path: path.write_text("[1, 2, 3]"), "expected a JSON object, found a list"),
    (lambda path: edit_json(path, lambda v: v.pop("categories")), "categories.category_1 has no list of names"),
    (lambda path: edit_json(path, lambda v: v["categories"]["category_1"].update(ids=[0, 1])),
     "categories.category_1.ids holds 2 entries, expected a list of 18 whole numbers"),
    (lambda path: edit_json(path, lambda v: v["categories"]["category_1"]["ids"].__setitem__(1, 99)),
     "categories.category_1.ids holds 99, expected 0..0"),
    (lambda path: edit_json(path, lambda v: v["log_price_median"].__setitem__(2, "cheap")),
     "log_price_median holds 'cheap'"),
    (lambda path: edit_json(path, lambda v: v.update(vocab_size=99)), "vocab_size is 99, expected 18"),
    (lambda path: edit_json(path, lambda v: v.update(products=v["products"][:3])), "products is not a list of 15"),
], ids=["not-json", "binary", "list", "no-categories", "short-ids", "category-id-too-big", "median-string",
        "vocab-size", "products"])
def test_bad_vocab_json_names_the_file_and_field(samples, tmp_path, damage, fragment):
    damage(samples / "vocab.json")
    stage2_error(samples, tmp_path, "vocab.json", fragment)


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(n_customer_keys="many"), "n_customer_keys is 'many', expected a whole number >= 1"),
    (lambda m: m.update(n_products=None), "n_products is None"),
    (lambda m: m.update(n_stores=-5), "n_stores is -5"),
    (lambda m: m.update(n_customers=2.5), "n_customers is 2.5"),
    (lambda m: m.update(n_store_regions=True), "n_store_regions is True"),
    (lambda m: m.pop("n_weeks"), "n_weeks is missing"),
    (lambda m: m.update(vocab_size=5), "vocab_size is 5, expected n_products + 3 = 18"),
    (lambda m: m.update(n_customer_keys=1), "n_customer_keys is 1, expected at least n_customers + 1"),
    (lambda m: m["split_weeks"].update(test=[9, 30]), "split_weeks is"),
], ids=["string", "null", "negative", "float", "bool", "missing", "vocab-size", "keys", "split"])
def test_metadata_of_the_wrong_shape_is_one_line_before_any_output(samples, tmp_path, capsys, change, fragment):
    edit_json(samples / "metadata.json", change)
    with pytest.raises(RetailSimInputError, match="metadata.json"):
        read_metadata(samples)
    assert module_main("retailsim.prepare_tensor_cache", ["--samples", str(samples), "--out", str(tmp_path / "c")]) == 2
    assert_one_line_error(capsys.readouterr().err, "metadata.json", fragment, "rerun prepare-samples")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_metadata_that_is_not_json_names_the_file(samples, tmp_path):
    (samples / "metadata.json").write_text('{"format": "retailsim-samples", ')
    with pytest.raises(RetailSimInputError, match="metadata.json: the file is not valid JSON"):
        read_metadata(samples)

