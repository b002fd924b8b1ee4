"""Batch assembly and co-occurrence throughput (SPEC 7 "loader samples/s native vs NumPy", SPEC 8).

Collate: batches of 256 random training samples (no length bucketing: every batch pads to nearly the full
history), max_history 256, the per-item part *and* the per-basket context, timed as
  * native: ``retailsim._native.collate_items`` (ours), one core;
  * numpy: the vectorised NumPy twin;
  * per-sample loop: ``retailsim.data.collate_reference`` — one sample at a time, NumPy inside the sample,
    the way a typical ``Dataset.__getitem__`` + padding collate is written (the tests' reference).
Also one DataLoader epoch (native, bucketed, no workers) to show what bucketing buys end to end.
Co-occurrence: top-50 partners over the training baskets, native (1 and 2 threads) vs the NumPy twin.
``samples_per_s`` / ``pairs_per_s`` are stored in each entry's extra_info.

Data: the demo-size synthetic set (2,000 customers, 800 products, 60 weeks) generated once into
``.benchmarks/loader-cache`` (~30 s); ``--quick`` uses 300 customers and 20 weeks.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from generated_data import generated_cache
from harness import measure
from retailsim import native
from retailsim.data import cooccurrence as co
from retailsim.data.batching import Batch, CollateArrays, collate_items, context_features, kernel_arguments
from retailsim.data.collate_reference import collate_items_reference
from retailsim.data.loader import make_loader, padding_fraction, set_epoch

BATCH = 256
MAX_HISTORY = 256


@pytest.fixture(scope="module")
def cache(quick):
    return generated_cache(*((300, 20) if quick else (2000, 60)))


@pytest.fixture(scope="module")
def arrays(cache):
    return CollateArrays.from_cache(cache, "train")


def _batches(arrays, quick):
    rng = np.random.default_rng(0)
    return [rng.integers(0, arrays.n_baskets, BATCH) for _ in range(2 if quick else 8)]


def _collate_with(impl, arrays, batches):
    def run():
        for epoch, samples in enumerate(batches):
            if impl == "per-sample loop":
                args = kernel_arguments(arrays, samples, seed=0, epoch=epoch, train=True, max_history=MAX_HISTORY)
                items = collate_items_reference(**args)
            else:
                items = collate_items(arrays, samples, seed=0, epoch=epoch, train=True, max_history=MAX_HISTORY,
                                      use_native=impl == "native")
            fields = {**items, **context_features(arrays, samples, items)}
            Batch(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fields.items()})
    return run


@pytest.mark.parametrize("impl", ["native", "numpy", "per-sample loop"])
def test_collate_samples_per_s(benchmark, impl, arrays, quick):
    if impl == "native" and not native.available():
        pytest.skip("native extension not built or RETAILSIM_NATIVE=0")
    batches = _batches(arrays, quick)
    history = np.asarray(arrays.basket["history_end_week"]) - np.asarray(arrays.basket["history_start"])
    mean_window = float(np.minimum(history[np.concatenate(batches)], MAX_HISTORY).mean())
    measure(benchmark, _collate_with(impl, arrays, batches), device=torch.device("cpu"),
            group=f"collate B={BATCH} max_history={MAX_HISTORY} (train, random batches)", impl=impl,
            ours=impl == "native", rounds=3 if impl == "per-sample loop" else 10, mean_history_window=mean_window)
    benchmark.extra_info["samples_per_s"] = round(len(batches) * BATCH / benchmark.stats.stats.median)


@pytest.mark.parametrize("bucket", [True, False], ids=["bucketed", "unbucketed"])
def test_loader_epoch(benchmark, bucket, cache):
    loader = make_loader(cache, "train", batch_size=BATCH, bucket=bucket, max_history=MAX_HISTORY)
    n_samples = len(loader.dataset)

    def epoch():
        set_epoch(loader, 0)
        for _ in loader:
            pass

    sampler = loader.sampler
    fractions = padding_fraction(sampler.batches(0), sampler.basket_lengths, sampler.history_lengths)
    measure(benchmark, epoch, device=torch.device("cpu"), group=f"DataLoader epoch B={BATCH} (native, 0 workers)",
            impl="bucketed" if bucket else "unbucketed", ours=bucket, rounds=3,
            padding_basket=round(fractions["basket"], 3), padding_history=round(fractions["history"], 3))
    benchmark.extra_info["samples_per_s"] = round(n_samples / benchmark.stats.stats.median)


@pytest.mark.parametrize("impl", ["native x1", "native x2", "numpy"])
def test_cooccurrence_pairs_per_s(benchmark, impl, cache):
    if impl.startswith("native") and not native.available():
        pytest.skip("native extension not built or RETAILSIM_NATIVE=0")
    threads = int(impl[-1]) if impl.startswith("native") else 1

    def run():
        return co.from_cache(cache, top_k=50, n_threads=threads, use_native=impl != "numpy")

    pairs = run().pairs
    measure(benchmark, run, device=torch.device("cpu"), group="co-occurrence top-50 (train split)", impl=impl,
            ours=impl == "native x1", rounds=3, pairs=pairs)
    benchmark.extra_info["pairs_per_s"] = round(pairs / benchmark.stats.stats.median)
