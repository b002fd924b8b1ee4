"""The collate contract written the way most projects write a loader: one sample at a time, in plain Python.

:func:`collate_items_reference` builds the same arrays as the native kernel and the NumPy twin of
``retailsim.data.batching`` (tests check all three agree bit for bit), and is the per-sample baseline of
``benchmarks/bench_loader.py``: a Dataset.__getitem__-style loop with NumPy inside each sample, as most
projects write it. It shares only the hash (``batching._draws``; its scalar form :func:`mix64` is checked
against splitmix64's published outputs) with the twin, and is not used by the package.
"""
from __future__ import annotations

import numpy as np

from retailsim.data.batching import IGNORE_TARGET, _draws

_MASK64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """splitmix64's finaliser on Python ints (the scalar form of batching._mix64)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def collate_items_reference(*, basket_item_offsets, item_ids, item_price, history_start, history_end, basket_week,
                            stream_items, stream_weeks, product_category, sample_indices, seed, epoch, train,
                            mask_rate_bp, n_products, max_items, max_history, n_categories) -> dict[str, np.ndarray]:
    """Per-sample loop (NumPy within a sample) with the contract of ``retailsim._native.collate_items``."""
    rows = []
    head = mix64(mix64(seed) ^ epoch)
    for s in (int(x) for x in sample_indices):
        base = np.array([mix64(head ^ s)], np.uint64)
        lo = int(basket_item_offsets[s])
        n = min(int(basket_item_offsets[s + 1]) - lo, max_items)
        items = np.asarray(item_ids[lo:lo + n], np.int64)
        price = np.array(item_price[lo:lo + n], np.float32)
        k = 0 if n == 0 else min(n, max(1, (mask_rate_bp * n + 5000) // 10000))
        chosen = np.lexsort((np.arange(n), _draws(base, n, 0)[0]))[:k]
        inputs, targets = items.copy(), np.full(n, IGNORE_TARGET, np.int64)
        targets[chosen] = items[chosen]
        action = _draws(base, n, 1)[0] % np.uint64(10) if train else np.zeros(n, np.uint64)
        random_ids = (_draws(base, n, 2)[0] % np.uint64(n_products)).astype(np.int64) + 1
        selected = np.zeros(n, bool)
        selected[chosen] = True
        hidden = selected & (action != 9)
        inputs[selected & (action < 8)] = n_products + 2
        inputs[selected & (action == 8)] = random_ids[selected & (action == 8)]
        price[hidden] = 0.0
        end = int(history_end[s])
        start = max(int(history_start[s]), end - max_history)
        history = np.asarray(stream_items[start:end], np.int64)
        weeks_before = int(basket_week[s]) - np.asarray(stream_weeks[start:end], np.int32)
        counts = np.bincount(product_category[history], minlength=n_categories).astype(np.float32)
        shares = counts / np.float32(len(history)) if len(history) else counts
        rows.append((items, inputs, targets, hidden, price, selected, history, weeks_before, shares))

    batch = len(rows)
    width = max([1] + [len(r[0]) for r in rows])
    depth = max([1] + [len(r[6]) for r in rows])
    out = {
        "basket_items": np.zeros((batch, width), np.int64), "basket_valid": np.zeros((batch, width), bool),
        "basket_price": np.zeros((batch, width, 3), np.float32), "price_hidden": np.zeros((batch, width), bool),
        "masked_positions": np.zeros((batch, width), bool),
        "targets": np.full((batch, width), IGNORE_TARGET, np.int64),
        "history_items": np.zeros((batch, depth), np.int64), "history_valid": np.zeros((batch, depth), bool),
        "history_weeks_before": np.zeros((batch, depth), np.int32),
        "history_category_shares": np.zeros((batch, n_categories), np.float32),
    }
    for b, (items, inputs, targets, hidden, price, chosen, history, weeks_before, shares) in enumerate(rows):
        n, h = len(items), len(history)
        out["basket_items"][b, :n] = inputs
        out["basket_valid"][b, :n] = True
        out["basket_price"][b, :n] = price
        out["price_hidden"][b, :n] = hidden
        out["masked_positions"][b, :n] = chosen
        out["targets"][b, :n] = targets
        out["history_items"][b, :h] = history
        out["history_valid"][b, :h] = True
        out["history_weeks_before"][b, :h] = weeks_before
        out["history_category_shares"][b] = shares
    return out
