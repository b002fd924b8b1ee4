"""Co-occurrence top-k (SPEC 8): native vs NumPy twin vs a brute-force count, ordering, exclusions, errors."""
from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from retailsim.data import cooccurrence as co
from retailsim.errors import RetailSimInputError
from tests.data.batching_fixtures import IMPLS, needs, small_cache

pytestmark = pytest.mark.native_parity


def run(impl, offsets, items, **kw):
    needs(impl)
    return co.cooccurrence(offsets, items, use_native=impl == "native", **kw)


def random_baskets(seed, n_baskets=300, n_products=40, max_items=12):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_items + 1, n_baskets)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = rng.integers(0, n_products + 3, int(offsets[-1])).astype(np.int32)  # PAD/UNK/MASK and repeats too
    return offsets, items, n_products


def brute_force(offsets, items, n_products, top_k):
    pairs, baskets = Counter(), Counter()
    for b in range(len(offsets) - 1):
        real = sorted({int(i) for i in items[offsets[b]:offsets[b + 1]] if 1 <= i <= n_products})
        baskets.update(real)
        pairs.update(permutations(real, 2))
    rows = {}
    for (a, c), n in pairs.items():
        rows.setdefault(a, []).append((-n, c))
    return {a: [(c, -n) for n, c in sorted(r)[:top_k]] for a, r in rows.items()}, baskets


def as_rows(result):
    return {a: list(zip(*(x.tolist() for x in result.partners(a)))) for a in range(len(result.indptr) - 1)
            if result.indptr[a + 1] > result.indptr[a]}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(impl, seed):
    offsets, items, n_products = random_baskets(seed)
    top_k = [1, 3, 10, 100, 5, 2][seed]
    result = run(impl, offsets, items, n_products=n_products, top_k=top_k)
    expected, baskets = brute_force(offsets, items, n_products, top_k)
    assert as_rows(result) == expected
    assert result.item_baskets.tolist() == [baskets.get(i, 0) for i in range(n_products + 3)]
    sizes = [len({i for i in items[offsets[b]:offsets[b + 1]] if 1 <= i <= n_products}) for b in range(len(offsets) - 1)]
    assert result.pairs == sum(n * (n - 1) for n in sizes)
    assert result.indptr.dtype == np.int64 and result.neighbors.dtype == np.int32 and result.counts.dtype == np.int64


def test_native_equals_numpy_and_threads_do_not_change_the_result(tmp_path_factory):
    needs("native")
    cache = small_cache(tmp_path_factory)
    reference = co.from_cache(cache, top_k=20, use_native=False)
    assert reference.pairs > 10_000
    for threads in (1, 2, 3):
        result = co.from_cache(cache, top_k=20, use_native=True, n_threads=threads)
        for name in ("indptr", "neighbors", "counts", "item_baskets"):
            assert np.array_equal(getattr(result, name), getattr(reference, name)), (name, threads)


@pytest.mark.parametrize("impl", IMPLS)
def test_hand_example(impl):
    # baskets {1,2,3}, {1,2}, {2,UNK}, {}, {1,1,2}: pair (1,2) in 3 baskets, (1,3) and (2,3) in one
    offsets = np.array([0, 3, 5, 7, 7, 10], np.int64)
    items = np.array([1, 2, 3, 1, 2, 2, 4, 1, 1, 2], np.int32)
    result = run(impl, offsets, items, n_products=3, top_k=5)
    assert as_rows(result) == {1: [(2, 3), (3, 1)], 2: [(1, 3), (3, 1)], 3: [(1, 1), (2, 1)]}
    assert result.item_baskets.tolist() == [0, 3, 4, 1, 0, 0]
    assert result.indptr.tolist() == [0, 0, 2, 4, 6, 6, 6]


@pytest.mark.parametrize("impl", IMPLS)
def test_errors(impl):
    offsets, items = np.array([0, 2, 4], np.int64), np.array([1, 2, 2, 3], np.int32)
    cases = [((np.array([0, 2, 5]), items), {}, "outside item_ids"),
             ((np.array([0, 3, 2]), items), {}, "non-decreasing"),
             ((np.array([-1, 2, 4]), items), {}, "outside item_ids"),
             ((offsets, np.array([1, 2, 7, 3], np.int32)), {}, "vocabulary"),
             ((offsets, np.array([1, -2, 2, 3], np.int32)), {}, "vocabulary"),
             ((np.zeros(0, np.int64), items), {}, "n_baskets"),
             ((offsets, items), {"top_k": 0}, "top_k")]
    for (o, i), extra, match in cases:
        with pytest.raises(ValueError, match=match):
            run(impl, o, i, **{"n_products": 3, **extra})


def test_from_cache_uses_training_baskets_only(tmp_path_factory):
    cache = small_cache(tmp_path_factory)
    train = np.load(cache / "train" / "basket_item_offsets.npy")
    result = co.from_cache(cache, top_k=5, use_native=False)
    items = np.load(cache / "train" / "item_ids.npy")
    direct = co.cooccurrence(train, items, n_products=len(result.indptr) - 4, top_k=5, use_native=False)
    assert np.array_equal(result.counts, direct.counts) and np.array_equal(result.neighbors, direct.neighbors)
    with pytest.raises(RetailSimInputError, match="not a tensor cache"):
        co.from_cache(cache.parent)
