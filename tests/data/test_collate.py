"""collate (SPEC 3.5, 3.6, 8): native kernel vs NumPy twin vs the per-sample reference, bit for bit; masking
rules; edge cases; leakage; corrupted inputs. ``make test`` reruns the native_parity ones with RETAILSIM_NATIVE=0,
where the twin is still checked against the reference and only the compiled kernel is skipped."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retailsim import native
from retailsim.data import batching
from retailsim.data.batching import IGNORE_TARGET, Batch, CollateArrays, collate, collate_items_numpy
from retailsim.data.collate_reference import collate_items_reference, mix64
from tests.data.batching_fixtures import IMPLS, assert_same, hand_arrays, kernel_args, needs, small_cache


def kernel(impl):
    needs(impl)
    return native.load().collate_items if impl == "native" else collate_items_numpy


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return small_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def train_arrays(cache):
    return CollateArrays.from_cache(cache, "train")


def cache_args(arrays: CollateArrays, samples, *, mask_rate_bp=1500, **kw):
    args = batching.kernel_arguments(arrays, samples, mask_rate=mask_rate_bp / 10000, train=kw.pop("train", True), **kw)
    return {**args, "epoch": kw["epoch"]}  # the kernel's own epoch, also in evaluation


def test_hash_is_splitmix64():
    # splitmix64 seeded with 0 yields 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F first.
    gamma = 0x9E3779B97F4A7C15
    assert [mix64(k * gamma % 2**64) for k in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    values = np.array([0, 1, 2**63, 2**64 - 1], np.uint64)
    assert batching._mix64(values).tolist() == [mix64(int(v)) for v in values]


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_matches_reference_over_random_seeds(impl, split, cache):
    arrays = CollateArrays.from_cache(cache, split)
    rng = np.random.default_rng(11)
    for trial in range(30):
        samples = rng.integers(0, arrays.n_baskets, int(rng.integers(1, 200)))
        kw = dict(seed=int(rng.integers(0, 2**64, dtype=np.uint64)), epoch=int(rng.integers(0, 2**20)),
                  train=bool(trial % 3), mask_rate_bp=int(rng.choice([1500, 2000, 1, 10000, int(rng.integers(1, 10001))])),
                  max_items=int(rng.integers(1, 60)), max_history=int(rng.choice([1, 7, 64, 256, 1000])))
        args = cache_args(arrays, samples, **kw)
        assert_same(kernel(impl)(**args), collate_items_reference(**args))


@pytest.mark.native_parity
def test_native_equals_numpy_through_public_collate(train_arrays):
    needs("native")
    rng = np.random.default_rng(5)
    for trial in range(40):
        samples = rng.integers(0, train_arrays.n_baskets, 256)
        kw = dict(seed=int(rng.integers(0, 2**63)), epoch=trial, train=trial % 2 == 0,
                  mask_rate=[0.15, 0.20][trial % 2], max_history=256)
        a, b = collate(train_arrays, samples, use_native=True, **kw), collate(train_arrays, samples, use_native=False, **kw)
        for name, value in vars(a).items():
            assert torch.equal(value, getattr(b, name)), name


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_edge_cases_by_hand(impl, train):
    """One-item basket, basket over the cap, customer without history, anonymous customer."""
    arrays = hand_arrays()
    for seed in range(25):
        args = kernel_args(arrays, [0, 1, 2, 3], seed=seed, train=train, max_items=5)
        out = kernel(impl)(**args)
        assert_same(out, collate_items_reference(**args))
        assert out["basket_items"].shape == (4, 5) and out["history_items"].shape == (4, 5)
        assert out["basket_valid"].sum(1).tolist() == [1, 5, 3, 2]  # basket 1 capped from 7 to 5
        assert out["masked_positions"].sum(1).tolist() == [1, 1, 1, 1]  # round(0.15 n) -> at least 1
        assert out["targets"][1][out["masked_positions"][1]].item() in [1, 2, 3, 5, 6]  # never beyond the cap
        assert out["history_items"][0].tolist() == [1, 2, 3, 10, 4]
        assert out["history_weeks_before"][0].tolist() == [4, 4, 3, 2, 2]
        assert out["history_category_shares"][0].tolist() == pytest.approx([0.2, 0.4, 0.4])  # UNK 10 -> 0, 1 2 -> 1, 3 4 -> 2
        for no_history in (2, 3):
            assert not out["history_valid"][no_history].any() and not out["history_items"][no_history].any()
            assert not out["history_category_shares"][no_history].any()
        if not train:
            masked = out["masked_positions"]
            assert (out["basket_items"][masked] == 9 + 2).all() and out["price_hidden"][masked].all()
    # max_history shorter than the history keeps the most recent items
    out = kernel(impl)(**kernel_args(arrays, [1], max_history=2))
    assert out["history_items"].tolist() == [[10, 4]] and out["history_weeks_before"].tolist() == [[2, 2]]


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
def test_mask_counts_and_bert_split(impl, train_arrays):
    samples = np.arange(train_arrays.n_baskets)
    out = kernel(impl)(**cache_args(train_arrays, samples, seed=1, epoch=0, train=True))
    n = out["basket_valid"].sum(1)
    assert (out["masked_positions"].sum(1) == np.maximum(1, np.floor(0.15 * n + 0.5))).all()
    masked = out["masked_positions"]
    assert (out["targets"][masked] == np.asarray(train_arrays.basket["item_ids"])[  # true ids
        (np.asarray(train_arrays.basket["basket_item_offsets"])[samples][:, None] + np.arange(masked.shape[1]))[masked]]).all()
    assert (out["targets"][~masked] == IGNORE_TARGET).all()
    shown = out["basket_items"][masked]
    mask_id, n_products = train_arrays.n_products + 2, train_arrays.n_products
    is_mask, is_keep = shown == mask_id, shown == out["targets"][masked]
    is_random = ~is_mask & ~is_keep
    total = masked.sum()
    assert total > 3000
    assert abs(is_mask.mean() - 0.8) < 0.03 and abs(is_keep.mean() - 0.1) < 0.03  # keep includes lucky randoms
    assert ((shown[is_random] >= 1) & (shown[is_random] <= n_products)).all()
    hidden = out["price_hidden"][masked]
    assert hidden[~is_keep].all() and abs(hidden.mean() - 0.9) < 0.03  # MASK and random hide the price
    assert not out["price_hidden"][~masked].any()
    assert (out["basket_price"][out["price_hidden"]] == 0).all()


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
def test_masks_depend_on_seed_epoch_and_sample_only(impl, train_arrays):
    samples = np.array([3, 17, 40, 41, 99, 250])
    run = lambda s, **kw: kernel(impl)(**cache_args(train_arrays, s, **kw))  # noqa: E731
    whole = run(samples, seed=4, epoch=2)
    part = run(samples[::-1][:3], seed=4, epoch=2)  # other batch, other order, other widths
    for row, sample in enumerate(samples[::-1][:3]):
        i = int(np.flatnonzero(samples == sample)[0])
        n = int(whole["basket_valid"][i].sum())
        for name in ("basket_items", "masked_positions", "targets", "price_hidden"):
            assert np.array_equal(whole[name][i, :n], part[name][row, :n]), name
    other_epoch = run(samples, seed=4, epoch=3)
    assert not np.array_equal(whole["masked_positions"], other_epoch["masked_positions"])
    evals = [batching.collate_items(train_arrays, samples, seed=9, epoch=e, train=False, use_native=impl == "native")
             for e in (0, 5)]
    assert_same(evals[0], evals[1])  # evaluation ignores the epoch (the kernel is given EVAL_EPOCH)
    assert_same(evals[0], run(samples, seed=9, epoch=batching.EVAL_EPOCH, train=False))


def test_public_collate_batch_fields(train_arrays):
    samples = np.array([0, 5, 9, 200])
    batch = collate(train_arrays, samples, seed=0, epoch=0)
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.basket_items.dtype == torch.int64 and batch.basket_price.dtype == torch.float32
    assert batch.history_weeks_before.dtype == torch.int32 and batch.masked_positions.dtype == torch.bool
    assert batch.customer_stats.shape == (4, 4) and batch.history_category_shares.shape[1] == train_arrays.n_categories
    b = train_arrays.basket
    assert batch.labels.tolist() == np.asarray(b["labels"])[samples].tolist()
    assert batch.time[:, 0].tolist() == np.asarray(b["week"])[samples].tolist()
    assert batch.customer_stats[:, 0].tolist() == pytest.approx(np.log1p(np.asarray(b["prior_baskets"])[samples]))
    has = batch.history_valid.any(1)
    assert batch.customer_stats[~has, 2].eq(0).all()
    moved = batch.to("cpu")
    assert torch.equal(moved.targets, batch.targets)
    with pytest.raises(ValueError, match="mask_rate"):
        collate(train_arrays, samples, mask_rate=0.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        collate(train_arrays, samples.reshape(2, 2))


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_leakage_changing_a_masked_product_changes_only_the_target(impl, train, train_arrays):
    """The true product (and its price) at a hidden position is invisible to every input tensor."""
    samples = np.arange(0, train_arrays.n_baskets, 7)
    args = cache_args(train_arrays, samples, seed=21, epoch=4, train=train)
    base = kernel(impl)(**args)
    rows, cols = np.nonzero(base["price_hidden"])
    assert len(rows) > 50
    offsets = args["basket_item_offsets"]
    item_ids, item_price = args["item_ids"].copy(), args["item_price"].copy()
    at = offsets[samples[rows]] + cols
    item_ids[at] = (item_ids[at] % train_arrays.n_products) + 1  # another real product
    item_price[at] = item_price[at] * 3 + 1
    changed = kernel(impl)(**{**args, "item_ids": item_ids, "item_price": item_price})
    for name in base:
        if name != "targets":
            assert np.array_equal(base[name], changed[name]), name
    assert not np.array_equal(base["targets"], changed["targets"])


CORRUPTIONS = {
    "offset beyond items": lambda a: a["basket_item_offsets"].__setitem__(2, 99),
    "decreasing offsets": lambda a: a["basket_item_offsets"].__setitem__(2, 0),
    "negative offset": lambda a: a["basket_item_offsets"].__setitem__(1, -3),
    "history beyond stream": lambda a: a["history_end"].__setitem__(0, 6),
    "history start after end": lambda a: a["history_start"].__setitem__(1, 6),
    "negative history start": lambda a: a["history_start"].__setitem__(0, -1),
    "item id MASK": lambda a: a["item_ids"].__setitem__(3, 11),
    "item id PAD": lambda a: a["item_ids"].__setitem__(0, 0),
    "item id huge": lambda a: a["item_ids"].__setitem__(5, 2**31 - 1),
    "negative item id": lambda a: a["item_ids"].__setitem__(9, -7),
    "stream id out of range": lambda a: a["stream_items"].__setitem__(2, 12),
    "stream week not before": lambda a: a["stream_weeks"].__setitem__(4, 5),
    "category out of range": lambda a: a["product_category"].__setitem__(4, 3),
    "short category table": lambda a: a.__setitem__("product_category", a["product_category"][:-1]),
    "short item_price": lambda a: a.__setitem__("item_price", a["item_price"][:-1]),
    "short history arrays": lambda a: a.__setitem__("history_end", a["history_end"][:-1]),
    "empty offsets": lambda a: a.__setitem__("basket_item_offsets", a["basket_item_offsets"][:0]),
}


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_arrays_raise_a_clear_error(impl, corruption):
    arrays = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in hand_arrays().items()}
    CORRUPTIONS[corruption](arrays)
    with pytest.raises(ValueError, match=r"offsets|history|item_ids|stream|product_category|item_price|entries"):
        kernel(impl)(**kernel_args(arrays, [0, 1, 2, 3]))


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_arguments_raise(impl):
    arrays = hand_arrays()
    for bad, match in (({"sample_indices": np.array([4])}, "sample index 4"),
                       ({"sample_indices": np.array([-1])}, "sample index -1"),
                       ({"mask_rate_bp": 0}, "mask_rate"), ({"n_products": 0}, "n_products"),
                       ({"max_history": 0}, "max_history")):
        with pytest.raises(ValueError, match=match):
            kernel(impl)(**{**kernel_args(arrays, [0]), **bad})


@pytest.mark.native_parity
@pytest.mark.parametrize("impl", IMPLS)
def test_fuzz_random_corruption_never_crashes(impl):
    """Random bytes in offsets, ids and weeks: either a correct batch (same as the twin) or a ValueError."""
    rng = np.random.default_rng(2024)
    outcomes = {"ok": 0, "error": 0}
    for trial in range(300):
        arrays = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in hand_arrays().items()}
        for _ in range(int(rng.integers(1, 4))):
            name = str(rng.choice(["basket_item_offsets", "item_ids", "history_start", "history_end", "stream_items",
                                   "stream_weeks", "product_category"]))
            target = arrays[name]
            info = np.iinfo(target.dtype)
            value = rng.choice([rng.integers(-3, 16), rng.integers(info.min, info.max, dtype=np.int64)])
            target[rng.integers(0, len(target))] = np.array(value).astype(target.dtype)
        samples = rng.integers(-1, 5, int(rng.integers(1, 6)))
        args = kernel_args(arrays, samples, seed=trial, max_items=int(rng.integers(1, 9)))
        try:
            out = kernel(impl)(**args)
        except ValueError:
            outcomes["error"] += 1
            with pytest.raises(ValueError):
                collate_items_numpy(**args)
            continue
        outcomes["ok"] += 1
        assert_same(out, collate_items_numpy(**args))
    assert outcomes["ok"] > 10 and outcomes["error"] > 100
