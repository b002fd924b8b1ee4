"""Item-pair co-occurrence counts (SPEC 8), kept sparse: the top-k partners of every product.

``count(a, c)`` is the number of baskets holding both real products a != c (ids 1..N; PAD, UNK and MASK are
left out; a product listed twice in one basket counts once). For each product the ``top_k`` partners are kept,
ordered by (count descending, partner id ascending): a total order, so the native kernel
(``retailsim._native.cooccurrence_topk``) and the NumPy twin :func:`cooccurrence_numpy` agree exactly.
Used by the co-occurrence baseline (score candidates by their counts with the visible basket items) and as a
source of contrastive positives. Build it from the training split only (SPEC 3.3): :func:`from_cache`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retailsim import native

DEFAULT_TOP_K = 50
_CHUNK_PAIRS = 4_000_000  # ordered pairs per NumPy chunk (bounds the twin's memory)


@dataclass
class Cooccurrence:
    """CSR over product ids: partners of ``a`` are ``neighbors[indptr[a]:indptr[a+1]]`` with their ``counts``.

    indptr int64 [vocab_size + 1], neighbors int32 [nnz], counts int64 [nnz] (descending within a row),
    item_baskets int64 [vocab_size] (baskets holding each real product; 0 for PAD/UNK/MASK),
    pairs: ordered pairs counted (sum over baskets of n (n - 1)), for throughput figures.
    """

    indptr: np.ndarray
    neighbors: np.ndarray
    counts: np.ndarray
    item_baskets: np.ndarray
    pairs: int

    def partners(self, product: int) -> tuple[np.ndarray, np.ndarray]:
        """(partner ids, counts) of ``product``, most frequent first."""
        lo, hi = self.indptr[product], self.indptr[product + 1]
        return self.neighbors[lo:hi], self.counts[lo:hi]


def _validate(offsets: np.ndarray, items: np.ndarray, n_products: int, top_k: int) -> None:
    if len(offsets) < 1:
        raise ValueError("basket_item_offsets must hold n_baskets + 1 entries")
    if n_products < 1:
        raise ValueError("n_products must be at least 1")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if offsets[0] < 0 or offsets[-1] > len(items):
        raise ValueError("basket_item_offsets run outside item_ids")
    steps = np.diff(offsets)
    if (steps < 0).any():
        raise ValueError(f"basket_item_offsets must be non-decreasing (row {np.flatnonzero(steps < 0)[0]})")
    used = items[offsets[0]:offsets[-1]]
    bad = np.flatnonzero((used < 0) | (used >= n_products + 3))
    if len(bad):
        raise ValueError(f"item_ids[{offsets[0] + bad[0]}] = {used[bad[0]]} is outside the vocabulary "
                         f"0..{n_products + 2}")


def cooccurrence_numpy(basket_item_offsets, item_ids, *, n_products: int, top_k: int = DEFAULT_TOP_K) -> Cooccurrence:
    """NumPy twin of the native kernel: same result, same errors (ValueError)."""
    offsets = np.asarray(basket_item_offsets, np.int64)
    items = np.asarray(item_ids, np.int32)
    _validate(offsets, items, n_products, top_k)
    vocab = n_products + 3
    n_baskets = len(offsets) - 1
    basket_of = np.repeat(np.arange(n_baskets, dtype=np.int64), np.diff(offsets))
    ids = items[offsets[0]:offsets[-1]].astype(np.int64)
    real = (ids >= 1) & (ids <= n_products)
    distinct = np.unique(basket_of[real] * vocab + ids[real])  # (basket, product) pairs, sorted
    basket_of, ids = distinct // vocab, distinct % vocab
    item_baskets = np.bincount(ids, minlength=vocab).astype(np.int64)
    sizes = np.bincount(basket_of, minlength=n_baskets).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])

    codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    per_basket = sizes * sizes
    first = 0
    while first < n_baskets:  # chunks of whole baskets, each at most _CHUNK_PAIRS pairs (or one basket)
        reach = np.searchsorted(np.cumsum(per_basket[first:]), _CHUNK_PAIRS, side="right")
        last = first + max(1, int(reach))
        lo, hi = starts[first], starts[last]
        own = np.repeat(np.arange(lo, hi), sizes[basket_of[lo:hi]])  # each item, once per item of its basket
        partner_rank = np.arange(len(own)) - np.repeat(np.cumsum(sizes[basket_of[lo:hi]]) - sizes[basket_of[lo:hi]],
                                                       sizes[basket_of[lo:hi]])
        partner = starts[basket_of[own]] + partner_rank
        keep = own != partner
        chunk = ids[own[keep]] * vocab + ids[partner[keep]]
        codes = np.concatenate([codes, chunk])
        counts = np.concatenate([counts, np.ones(len(chunk), np.int64)])
        codes, inverse = np.unique(codes, return_inverse=True)
        counts = np.bincount(inverse, weights=counts, minlength=len(codes)).astype(np.int64)
        first = last

    a, c = codes // vocab, codes % vocab
    order = np.lexsort((c, -counts, a))
    a, c, counts = a[order], c[order], counts[order]
    row_start = np.searchsorted(a, a, side="left")
    kept = (np.arange(len(a)) - row_start) < top_k
    a, c, counts = a[kept], c[kept], counts[kept]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=vocab))]).astype(np.int64)
    return Cooccurrence(indptr, c.astype(np.int32), counts, item_baskets, int((sizes * (sizes - 1)).sum()))


def cooccurrence(basket_item_offsets, item_ids, *, n_products: int, top_k: int = DEFAULT_TOP_K,
                 n_threads: int = 1, use_native: bool | None = None) -> Cooccurrence:
    """Top-k co-occurrence over the baskets (native kernel when built, else the NumPy twin)."""
    module = native.load() if use_native is not False else None
    if use_native and module is None:
        raise RuntimeError("the native extension was requested but is not available (built? RETAILSIM_NATIVE=0?)")
    if module is None:
        return cooccurrence_numpy(basket_item_offsets, item_ids, n_products=n_products, top_k=top_k)
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}.")
    out = module.cooccurrence_topk(np.ascontiguousarray(basket_item_offsets, np.int64),
                                   np.ascontiguousarray(item_ids, np.int32), int(n_products), int(top_k),
                                   int(n_threads))
    return Cooccurrence(out["indptr"], out["neighbors"], out["counts"], out["item_baskets"], int(out["pairs"]))


def from_cache(folder: Path, *, top_k: int = DEFAULT_TOP_K, n_threads: int = 1,
               use_native: bool | None = None) -> Cooccurrence:
    """Co-occurrence over the training baskets of a tensor cache (never validation/test: SPEC 3.3)."""
    from retailsim.data.cache_reader import TensorCache

    cache = TensorCache.open(folder)
    train = cache.split_arrays("train")
    return cooccurrence(train["basket_item_offsets"], train["item_ids"], n_products=cache.n_products, top_k=top_k,
                        n_threads=n_threads, use_native=use_native)
