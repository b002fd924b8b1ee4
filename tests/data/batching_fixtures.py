"""Inputs for the batching tests: one small generated tensor cache per session, and hand-built arrays."""
from __future__ import annotations

import numpy as np
import pytest

from retailsim import native
from retailsim.cli import module_main

_CACHE: dict[str, object] = {}
IMPLS = ["numpy", "native"]


def needs(impl: str) -> None:
    if impl == "native" and not native.available():
        pytest.skip("native extension disabled (RETAILSIM_NATIVE=0) or not built; the NumPy twin is still tested")


def small_cache(tmp_path_factory):
    """A tiny synthetic data set through generate, Stage 1 and Stage 2 (built once per session, ~3 s)."""
    if "folder" not in _CACHE:
        root = tmp_path_factory.mktemp("batching_cache")
        steps = [("retailsim.generate", ["--out", root / "raw", "--customers", 300, "--products", 200, "--weeks", 20,
                                         "--seed", 7, "--quiet"]),
                 ("retailsim.prepare_samples", ["--input", root / "raw", "--out", root / "samples", "--quiet"]),
                 ("retailsim.prepare_tensor_cache", ["--samples", root / "samples", "--out", root / "cache", "--quiet"])]
        for module, argv in steps:
            assert module_main(module, [str(a) for a in argv]) == 0, module
        _CACHE["folder"] = root / "cache"
    return _CACHE["folder"]


def hand_arrays(n_products: int = 9, n_categories: int = 3) -> dict:
    """Four baskets: one item; 7 items; 3 items of a customer without history; an anonymous 2-item basket.

    Stream: customer A (baskets 0 and 1) has 5 earlier items in weeks 1-3; the baskets are in week 5.
    """
    items = [4, 1, 2, 3, 5, 6, 7, 10, 2, 3, 8, 9, 1]  # basket 1 holds UNK (10) last
    offsets = [0, 1, 8, 11, 13]
    price = np.arange(len(items) * 3, dtype=np.float32).reshape(-1, 3) / 7 + 0.5
    return {
        "basket_item_offsets": np.array(offsets, np.int64),
        "item_ids": np.array(items, np.int32),
        "item_price": price,
        "history_start": np.array([0, 0, 5, 0], np.int64),
        "history_end": np.array([5, 5, 5, 0], np.int64),
        "basket_week": np.array([5, 5, 5, 5], np.int16),
        "stream_items": np.array([1, 2, 3, 10, 4], np.int32),
        "stream_weeks": np.array([1, 1, 2, 3, 3], np.int16),
        "product_category": np.array([0, 1, 1, 2, 2, 1, 1, 2, 2, 1, 0, 0], np.int32)[:n_products + 3],
        "n_products": n_products,
        "n_categories": n_categories,
    }


def kernel_args(arrays: dict, samples, *, seed=0, epoch=0, train=True, mask_rate_bp=1500, max_items=50,
                max_history=256) -> dict:
    return {**arrays, "sample_indices": np.asarray(samples, np.int64), "seed": seed, "epoch": epoch, "train": train,
            "mask_rate_bp": mask_rate_bp, "max_items": max_items, "max_history": max_history}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name
