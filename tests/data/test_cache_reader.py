"""TensorCache: the one reader of a Stage 2 cache opens a good cache as the writer described it and refuses a
damaged one with one sentence naming the file, whichever reader of the package asks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from retailsim.cli import module_main
from retailsim.data import schema
from retailsim.data.batching import CollateArrays
from retailsim.data.cache_reader import TensorCache
from retailsim.errors import RetailSimInputError
from retailsim.model import data_sizes_from_cache
from tests.data.batching_fixtures import small_cache


@pytest.fixture
def cache_copy(tmp_path_factory, tmp_path):
    folder = tmp_path / "cache"
    shutil.copytree(small_cache(tmp_path_factory), folder)
    return folder


def _rewrite(folder, name, edit):
    """Load array ``name`` (e.g. "train/store_id"), apply ``edit`` to a copy and save it back in place."""
    path = folder / f"{name}.npy"
    values = np.array(np.load(path))
    edit(values)
    np.save(path, values)
    return path


def test_a_good_cache_opens_with_the_writer_sizes(cache_copy):
    manifest = json.loads((cache_copy / "cache.json").read_text())
    cache = TensorCache.open(cache_copy)
    assert (cache.n_products, cache.vocab_size, cache.n_stores) == (
        manifest["n_products"], manifest["vocab_size"], manifest["n_stores"])
    for split in schema.SPLITS:
        arrays = cache.split_arrays(split)
        assert cache.n_baskets(split) == manifest["splits"][split]["n_baskets"]
        assert len(arrays["item_ids"]) == manifest["splits"][split]["n_items"]
        assert not arrays["item_ids"].flags.writeable
    sizes = cache.data_sizes()
    assert sizes["n_stores"] == manifest["n_stores"] + 1
    assert sizes["category_sizes"] == [len(cache.category_names(level)) + 1 for level in range(4)]
    assert cache.product_category().shape == (cache.vocab_size, 4)


def test_missing_and_unparsable_manifests_are_one_sentence(tmp_path, cache_copy):
    with pytest.raises(RetailSimInputError, match="no such folder"):
        TensorCache.open(tmp_path / "nothing")
    with pytest.raises(RetailSimInputError, match="not a tensor cache"):
        TensorCache.open(tmp_path)
    (cache_copy / "cache.json").write_text('{"format": "retailsim-tensor-cache", ')
    with pytest.raises(RetailSimInputError, match="cache.json: the cache manifest cannot be read"):
        TensorCache.open(cache_copy)
    (cache_copy / "cache.json").write_text('["a list"]')
    with pytest.raises(RetailSimInputError, match="not a RetailSim tensor cache manifest"):
        TensorCache.open(cache_copy)


def test_a_manifest_with_wrong_types_is_refused(cache_copy):
    manifest = json.loads((cache_copy / "cache.json").read_text())
    manifest["n_stores"] = "thirty"
    (cache_copy / "cache.json").write_text(json.dumps(manifest))
    with pytest.raises(RetailSimInputError, match="n_stores is 'thirty', expected a count"):
        TensorCache.open(cache_copy)


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing", "other_dtype"])
def test_damaged_array_files_name_the_file(cache_copy, damage):
    path = cache_copy / "train" / "item_ids.npy"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    else:
        np.save(path, np.load(path).astype(np.int64))
    with pytest.raises(RetailSimInputError, match="train/item_ids.npy") as error:
        TensorCache.open(cache_copy)
    assert "\n" not in str(error.value) and "rerun prepare-tensor-cache" in str(error.value)


@pytest.mark.parametrize("name, edit, message", [
    ("train/store_id", lambda a: a.__setitem__(0, 10**6), "holds 1000000, outside 0.."),
    ("validation/item_ids", lambda a: a.__setitem__(-1, 2**31 - 1), "holds 2147483647"),
    ("test/customer_id", lambda a: a.__setitem__(1, -3), "holds -3"),
    ("train/labels", lambda a: a.__setitem__((2, 3), 9), "holds 9"),
    ("train/basket_item_offsets", lambda a: a.__setitem__(3, a[5] + 1), "non-decreasing offset array"),
    ("streams/stream_items", lambda a: a.__setitem__(0, 0), "holds 0, outside 1.."),
])
def test_ids_beyond_the_manifest_are_refused_not_grown_into(cache_copy, name, edit, message):
    _rewrite(cache_copy, name, edit)
    split = name.split("/")[0] if name.split("/")[0] in schema.SPLITS else "train"
    with pytest.raises(RetailSimInputError, match=message):
        TensorCache.open(cache_copy).split_arrays(split)
    # every reader of the package goes through the same check
    with pytest.raises(RetailSimInputError, match=message):
        data_sizes_from_cache(cache_copy)
    with pytest.raises(RetailSimInputError, match=message):
        CollateArrays.from_cache(cache_copy, split)


def test_a_category_id_beyond_vocab_json_is_refused(cache_copy):
    _rewrite(cache_copy, "vocab/product_category", lambda a: a.__setitem__((1, 0), 10**6))
    with pytest.raises(RetailSimInputError, match="product_category.npy holds 1000000"):
        TensorCache.open(cache_copy).data_sizes()


def test_the_train_verb_reports_a_damaged_cache_in_one_line(cache_copy, tmp_path, capsys):
    (cache_copy / "train" / "labels.npy").write_bytes(b"\x93NUMPY garbage")
    code = module_main("retailsim.train.cli", ["--data", str(cache_copy), "--out", str(tmp_path / "run"),
                                               "--preset", "tiny", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "labels.npy" in err, err
    assert not (tmp_path / "run").exists()
