"""The per-customer stream kernel: native vs NumPy twin vs a plain-Python replay, bit for bit (SPEC 8).

Under ``RETAILSIM_NATIVE=0`` (``make test`` reruns these) the NumPy twin is still checked against the replay;
only the comparison with the compiled kernel is skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

from retailsim import native
from retailsim.data.customer_streams import CustomerStreamBuilder, scatter_customer_streams_numpy

pytestmark = pytest.mark.native_parity

IMPLS = ["numpy", "native"]


def needs(impl):
    if impl == "native" and not native.available():
        pytest.skip("native extension disabled (RETAILSIM_NATIVE=0) or not built; the NumPy twin is still tested")


def random_baskets(seed, n_baskets=400, n_keys=15, anonymous=0.2, max_items=6):
    rng = np.random.default_rng(seed)
    key = rng.integers(1, n_keys, n_baskets)
    key[rng.random(n_baskets) < anonymous] = 0
    week = np.sort(rng.integers(1, 30, n_baskets)).astype(np.int32)
    counts = rng.integers(0, max_items + 1, n_baskets)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = rng.integers(1, 5000, int(offsets[-1])).astype(np.int32)
    return key, week, offsets, items, n_keys


def stream_offsets_for(key, offsets, n_keys):
    counts = np.diff(offsets)
    per_key = np.bincount(key, weights=counts, minlength=n_keys).astype(np.int64)
    per_key[0] = 0
    return np.concatenate([[0], np.cumsum(per_key)]).astype(np.int64)


def replay(key, week, offsets, items, n_keys):
    """The contract, one basket at a time."""
    stream_offsets = stream_offsets_for(key, offsets, n_keys)
    streams = {k: [] for k in range(n_keys)}
    start, end, end_week = [], [], []
    for b in range(len(key)):
        k = int(key[b])
        if k == 0:
            start.append(0), end.append(0), end_week.append(0)
            continue
        own = streams[k]
        start.append(int(stream_offsets[k]))
        end.append(int(stream_offsets[k]) + len(own))
        end_week.append(int(stream_offsets[k]) + sum(1 for _, w in own if w < week[b]))
        own.extend((int(i), int(week[b])) for i in items[offsets[b]:offsets[b + 1]])
    flat = [pair for k in range(n_keys) for pair in streams[k]]
    return (np.array([i for i, _ in flat], np.int32), np.array([w for _, w in flat], np.int16),
            np.array(start), np.array(end), np.array(end_week))


def build(impl, key, week, offsets, items, n_keys, chunks):
    stream_offsets = stream_offsets_for(key, offsets, n_keys)
    stream_items = np.full(stream_offsets[-1], -7, np.int32)  # unwritten entries would show as -7
    stream_weeks = np.full(stream_offsets[-1], -7, np.int16)
    builder = CustomerStreamBuilder(stream_offsets, stream_items, stream_weeks, use_native=impl == "native")
    assert builder.impl == impl
    parts = []
    bounds = [0, *chunks, len(key)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parts.append(builder.add(key[lo:hi], week[lo:hi], offsets[lo:hi + 1], items))
    assert builder.is_complete()
    return (stream_items, stream_weeks, *(np.concatenate(p) for p in zip(*parts)))


CASES = {
    "random-one-chunk": (lambda: random_baskets(0), []),
    "random-chunks-split-weeks": (lambda: random_baskets(1), [1, 57, 57, 200, 399]),
    "all-anonymous": (lambda: random_baskets(2, anonymous=1.0), [10]),
    "no-anonymous-empty-baskets": (lambda: random_baskets(3, anonymous=0.0, max_items=1), [100, 300]),
    "one-customer": (lambda: random_baskets(4, n_keys=2, anonymous=0.0), [3, 4, 5]),
    "single-basket": (lambda: random_baskets(5, n_baskets=1, anonymous=0.0), []),
    "empty": (lambda: random_baskets(6, n_baskets=0), []),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_replay_bit_for_bit(impl, case):
    needs(impl)
    make, chunks = CASES[case]
    key, week, offsets, items, n_keys = make()
    expected = replay(key, week, offsets, items, n_keys)
    got = build(impl, key, week, offsets, items, n_keys, chunks)
    for name, e, g in zip(("stream_items", "stream_weeks", "history_start", "history_end", "history_end_week"),
                          expected, got):
        assert g.dtype == e.dtype or name.startswith("history"), name
        np.testing.assert_array_equal(g, e, err_msg=name)


def test_native_equals_numpy_on_many_seeds():
    needs("native")
    for seed in range(20):
        key, week, offsets, items, n_keys = random_baskets(100 + seed, n_baskets=300 + seed)
        chunks = sorted(np.random.default_rng(seed).integers(0, len(key), 4).tolist())
        for a, b in zip(build("numpy", key, week, offsets, items, n_keys, chunks),
                        build("native", key, week, offsets, items, n_keys, chunks)):
            np.testing.assert_array_equal(a, b)


def test_chunk_offsets_need_not_start_at_zero():
    key, week, offsets, items, n_keys = random_baskets(8, n_baskets=50)
    for impl in IMPLS:
        if impl == "native" and not native.available():
            continue
        got = build(impl, key, week, offsets, items, n_keys, [20])
        np.testing.assert_array_equal(got[0], replay(key, week, offsets, items, n_keys)[0])


def _kernel_args():
    key, week, offsets, items, n_keys = random_baskets(9, n_baskets=20)
    stream_offsets = stream_offsets_for(key, offsets, n_keys)
    args = dict(
        customer_key=key.astype(np.int64), basket_week=week, item_offsets=offsets, item_ids=items,
        stream_offsets=stream_offsets, cursor=stream_offsets[:-1].copy(), week_cursor=stream_offsets[:-1].copy(),
        last_week=np.zeros(n_keys, np.int32), stream_items=np.full(stream_offsets[-1], -7, np.int32),
        stream_weeks=np.full(stream_offsets[-1], -7, np.int16), history_start=np.empty(20, np.int64),
        history_end=np.empty(20, np.int64), history_end_week=np.empty(20, np.int64),
    )
    return args


def _shrink_streams(a):
    """Every customer slice ends at 1: the first named customer's items no longer fit."""
    for name in ("stream_offsets", "cursor", "week_cursor"):
        a[name] = np.minimum(a[name], 1)


MALFORMED = {
    "key-out-of-range": (lambda a: a["customer_key"].__setitem__(3, len(a["cursor"])), "customer_key outside"),
    "negative-key": (lambda a: a["customer_key"].__setitem__(0, -1), "customer_key outside"),
    "decreasing-item-offsets": (lambda a: a["item_offsets"].__setitem__(5, a["item_offsets"][6] + 1),
                                "non-decreasing"),
    "item-offsets-past-the-end": (lambda a: a["item_offsets"].__setitem__(-1, len(a["item_ids"]) + 5),
                                  "outside item_ids"),
    "stream-too-small": (_shrink_streams, "overflow"),
    "cursor-outside-slice": (lambda a: a["cursor"].__setitem__(1, a["stream_offsets"][2] + 1), "cursor"),
    "length-mismatch": (lambda a: a.__setitem__("basket_week", a["basket_week"][:-1]), "disagree in length"),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_offsets_raise_before_writing(impl, case):
    needs(impl)
    args = _kernel_args()
    corrupt, message = MALFORMED[case]
    corrupt(args)
    kernel = native.load().scatter_customer_streams if impl == "native" else scatter_customer_streams_numpy
    with pytest.raises(ValueError, match=message):
        kernel(**args)
    assert (args["stream_items"] == -7).all() and (args["stream_weeks"] == -7).all()


def test_native_writes_through_memory_maps(tmp_path):
    needs("native")
    key, week, offsets, items, n_keys = random_baskets(11)
    stream_offsets = stream_offsets_for(key, offsets, n_keys)
    n_stream = int(stream_offsets[-1])
    mapped = np.lib.format.open_memmap(tmp_path / "items.npy", mode="w+", dtype=np.int32, shape=(n_stream,))
    weeks = np.lib.format.open_memmap(tmp_path / "weeks.npy", mode="w+", dtype=np.int16, shape=(n_stream,))
    builder = CustomerStreamBuilder(stream_offsets, mapped, weeks, use_native=True)
    builder.add(key, week, offsets, items)
    mapped.flush()
    del mapped
    np.testing.assert_array_equal(np.load(tmp_path / "items.npy"), replay(key, week, offsets, items, n_keys)[0])
