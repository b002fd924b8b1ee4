"""Per-customer item streams of the tensor cache (SPEC 3.4): native kernel and its NumPy twin.

Every named customer k (key >= 1) owns the slice ``[stream_offsets[k], stream_offsets[k+1])`` of one stream
shared by all splits, holding the items of each of its baskets in time order with the basket's week. For a
basket b of customer k the history window is ``stream[history_start[b] : history_end[b]]``: items of k's
*earlier* baskets only, never b's own or later ones. ``history_end_week[b] <= history_end[b]`` ends the window
at the last basket of an earlier week (SPEC 3.3's "history up to the week before"). Anonymous baskets (key 0)
get the empty window 0:0 and add nothing.

``CustomerStreamBuilder`` feeds time-ordered chunks of baskets to ``retailsim._native.scatter_customer_streams``
or, when the extension is absent or ``RETAILSIM_NATIVE=0``, to :func:`scatter_customer_streams_numpy`; both
give identical output and raise ValueError on inconsistent offsets before writing anything.
"""
from __future__ import annotations

import numpy as np

from retailsim import native


def scatter_customer_streams_numpy(*, customer_key, basket_week, item_offsets, item_ids, stream_offsets, cursor,
                                   week_cursor, last_week, stream_items, stream_weeks, history_start, history_end,
                                   history_end_week) -> None:
    """NumPy twin of the native kernel (same arguments, same in-place updates, same errors)."""
    n_baskets, n_keys = len(customer_key), len(stream_offsets) - 1
    if not (len(basket_week) == n_baskets and len(item_offsets) == n_baskets + 1 and len(history_start) == n_baskets
            and len(history_end) == n_baskets and len(history_end_week) == n_baskets):
        raise ValueError("basket arrays disagree in length (item_offsets needs n_baskets + 1 entries)")
    if n_keys < 1 or not len(cursor) == len(week_cursor) == len(last_week) == n_keys:
        raise ValueError("stream_offsets needs n_keys + 1 entries and cursor/week_cursor/last_week n_keys")
    if len(stream_weeks) != len(stream_items):
        raise ValueError("stream_items and stream_weeks differ in length")
    if item_offsets[0] < 0 or item_offsets[-1] > len(item_ids):
        raise ValueError("item_offsets run outside item_ids")
    counts = np.diff(item_offsets)
    if (counts < 0).any():
        raise ValueError("item_offsets must be non-decreasing")
    if n_baskets and (customer_key.min() < 0 or customer_key.max() >= n_keys):
        raise ValueError("customer_key outside 0..n_keys-1")
    if stream_offsets[0] < 0 or stream_offsets[-1] > len(stream_items):
        raise ValueError("stream_offsets run outside the stream arrays")
    if (np.diff(stream_offsets) < 0).any():
        raise ValueError("stream_offsets must be non-decreasing")
    if ((cursor < stream_offsets[:-1]) | (cursor > stream_offsets[1:]) | (week_cursor < stream_offsets[:-1])
            | (week_cursor > cursor)).any():
        raise ValueError("cursor/week_cursor outside their customer's stream slice")
    named = customer_key != 0
    added = np.bincount(customer_key[named], weights=counts[named], minlength=n_keys).astype(np.int64)
    if (cursor + added > stream_offsets[1:]).any():
        raise ValueError("a customer's items overflow its stream slice (stream_offsets too small)")

    history_start[~named] = history_end[~named] = history_end_week[~named] = 0
    baskets = np.flatnonzero(named)
    if len(baskets) == 0:
        return
    order = baskets[np.argsort(customer_key[baskets], kind="stable")]  # by customer, time order kept inside
    key, week, count = customer_key[order], basket_week[order], counts[order]
    positions = np.arange(len(order))
    first_of_key = np.ones(len(order), bool)
    first_of_key[1:] = key[1:] != key[:-1]
    key_start = np.maximum.accumulate(np.where(first_of_key, positions, 0))
    before = np.cumsum(count) - count
    end = cursor[key] + before - before[key_start]  # cursor when the basket is reached
    new_week = first_of_key.copy()
    new_week[1:] |= week[1:] != week[:-1]
    week_start = np.maximum.accumulate(np.where(new_week, positions, 0))
    continues_week = first_of_key & (last_week[key] == week)  # same week as the previous chunk's last basket
    end_week = np.where(continues_week, week_cursor[key], end)[week_start]

    history_start[order] = stream_offsets[key]
    history_end[order] = end
    history_end_week[order] = end_week
    owner = np.repeat(np.arange(n_baskets), counts)  # basket of each item of the chunk
    item_rows = np.arange(item_offsets[0], item_offsets[-1])
    kept = named[owner]
    owner, item_rows = owner[kept], item_rows[kept]
    end_by_basket = np.zeros(n_baskets, np.int64)
    end_by_basket[order] = end
    target = end_by_basket[owner] + (item_rows - item_offsets[owner])
    stream_items[target] = item_ids[item_rows]
    stream_weeks[target] = basket_week[owner]

    last_of_key = np.ones(len(order), bool)
    last_of_key[:-1] = key[1:] != key[:-1]
    touched = key[last_of_key]
    cursor[touched] = (end + count)[last_of_key]
    week_cursor[touched] = end_week[last_of_key]
    last_week[touched] = week[last_of_key]


class CustomerStreamBuilder:
    """Fills preallocated stream arrays from time-ordered chunks of baskets."""

    def __init__(self, stream_offsets: np.ndarray, stream_items: np.ndarray, stream_weeks: np.ndarray,
                 use_native: bool | None = None) -> None:
        assert stream_offsets.dtype == np.int64 and stream_items.dtype == np.int32 and stream_weeks.dtype == np.int16
        self.stream_offsets = np.ascontiguousarray(stream_offsets)
        self.stream_items, self.stream_weeks = stream_items, stream_weeks
        n_keys = len(stream_offsets) - 1
        self.cursor = self.stream_offsets[:-1].copy()
        self.week_cursor = self.cursor.copy()
        self.last_week = np.zeros(n_keys, np.int32)
        module = native.load() if use_native is not False else None
        if use_native and module is None:
            raise RuntimeError("the native extension was requested but is not available")
        self.kernel = module.scatter_customer_streams if module is not None else scatter_customer_streams_numpy
        self.impl = "native" if module is not None else "numpy"

    def add(self, customer_key: np.ndarray, basket_week: np.ndarray, item_offsets: np.ndarray,
            item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append one chunk; returns (history_start, history_end, history_end_week), int64 [n_baskets]."""
        n = len(customer_key)
        out = [np.empty(n, np.int64) for _ in range(3)]
        self.kernel(
            customer_key=np.ascontiguousarray(customer_key, np.int64),
            basket_week=np.ascontiguousarray(basket_week, np.int32),
            item_offsets=np.ascontiguousarray(item_offsets, np.int64),
            item_ids=np.ascontiguousarray(item_ids, np.int32),
            stream_offsets=self.stream_offsets,
            cursor=self.cursor,
            week_cursor=self.week_cursor,
            last_week=self.last_week,
            stream_items=self.stream_items,
            stream_weeks=self.stream_weeks,
            history_start=out[0],
            history_end=out[1],
            history_end_week=out[2],
        )
        return out[0], out[1], out[2]

    def is_complete(self) -> bool:
        return bool((self.cursor == self.stream_offsets[1:]).all())
