"""Stage 1 + Stage 2 throughput (rows/s) on a generated LGSR data set, native vs NumPy path (SPEC 7).

The native extension speeds up one step of the pipeline, the per-customer stream build of Stage 2
(``retailsim._native.scatter_customer_streams``); everything else is the same Python/Arrow code on both paths.
Three groups, each native (ours) vs the NumPy twin:
- ``pipeline stage1+2``: prepare-samples + prepare-tensor-cache from the LGSR CSVs, rows/s of input lines;
- ``stage2 tensor cache``: prepare-tensor-cache alone from fixed Stage 1 output, baskets/s;
- ``customer streams kernel``: the stream build alone on 2M random baskets in 20 chunks, baskets/s.
Data: the generator's default demo set (2,000 customers, 60 weeks, ~0.7M lines); ``--quick``: 150 customers,
12 weeks. The CPU only: ``--device`` other than cpu skips (the pipeline never touches a GPU).
"""
from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from harness import measure
from retailsim import native
from retailsim.cli import module_main
from retailsim.data.customer_streams import CustomerStreamBuilder
from retailsim.data.samples import write_samples
from retailsim.data.tensor_cache import write_tensor_cache

IMPLS = [("native", True), ("numpy", False)]
_counter = itertools.count()


@pytest.fixture(scope="module")
def generated(tmp_path_factory, quick, device):
    if device.type != "cpu":
        pytest.skip("the data pipeline runs on the CPU only")
    folder = tmp_path_factory.mktemp("pipeline") / "raw"
    size = ["--customers", "150", "--weeks", "12"] if quick else []
    assert module_main("retailsim.generate", ["--out", str(folder), "--quiet", *size]) == 0
    from retailsim.data.readers import open_source

    source = open_source(folder, format="lgsr")
    samples = folder.parent / "samples"
    samples.mkdir()
    metadata = write_samples(source, samples, show_progress=False)
    rows = sum(s["rows"] for s in metadata["splits"].values())
    baskets = sum(s["baskets"] for s in metadata["splits"].values())
    return folder, samples, rows, baskets


def _fresh_folder(base):
    out = base / f"run{next(_counter)}"
    out.mkdir()
    return out


def _skip_without_native(ours):
    if ours and not native.available():
        pytest.skip("native extension disabled (RETAILSIM_NATIVE=0) or not built")


@pytest.mark.parametrize("impl, ours", IMPLS, ids=[i for i, _ in IMPLS])
def test_stage1_plus_stage2(benchmark, generated, device, impl, ours):
    _skip_without_native(ours)
    from retailsim.data.readers import open_source

    raw, _, rows, _ = generated

    def both_stages():
        samples, cache = _fresh_folder(raw.parent), _fresh_folder(raw.parent)
        write_samples(open_source(raw, format="lgsr"), samples, show_progress=False)
        write_tensor_cache(samples, cache, show_progress=False, use_native=ours)
        shutil.rmtree(samples), shutil.rmtree(cache)

    measure(benchmark, both_stages, device=device, group="pipeline stage1+2", impl=impl, ours=ours, rounds=3,
            rows=rows)
    benchmark.extra_info["rows_per_s"] = round(rows / benchmark.stats.stats.median)


@pytest.mark.parametrize("impl, ours", IMPLS, ids=[i for i, _ in IMPLS])
def test_stage2(benchmark, generated, device, impl, ours):
    _skip_without_native(ours)
    raw, samples, _, baskets = generated

    def stage2():
        cache = _fresh_folder(raw.parent)
        write_tensor_cache(samples, cache, show_progress=False, use_native=ours)
        shutil.rmtree(cache)

    measure(benchmark, stage2, device=device, group="stage2 tensor cache", impl=impl, ours=ours, rounds=3,
            baskets=baskets)
    benchmark.extra_info["baskets_per_s"] = round(baskets / benchmark.stats.stats.median)


@pytest.mark.parametrize("impl, ours", IMPLS, ids=[i for i, _ in IMPLS])
def test_customer_streams_kernel(benchmark, quick, device, impl, ours):
    _skip_without_native(ours)
    if device.type != "cpu":
        pytest.skip("the data pipeline runs on the CPU only")
    rng = np.random.default_rng(0)
    n_baskets, n_keys = (20_000, 500) if quick else (2_000_000, 100_000)
    key = rng.integers(0, n_keys, n_baskets)
    week = np.sort(rng.integers(1, 118, n_baskets)).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 20, n_baskets))]).astype(np.int64)
    items = rng.integers(1, 5003, int(offsets[-1])).astype(np.int32)
    per_key = np.bincount(key, weights=np.diff(offsets), minlength=n_keys).astype(np.int64)
    per_key[0] = 0
    stream_offsets = np.concatenate([[0], np.cumsum(per_key)])
    stream_items = np.empty(int(stream_offsets[-1]), np.int32)
    stream_weeks = np.empty(int(stream_offsets[-1]), np.int16)
    bounds = np.linspace(0, n_baskets, 21).astype(int)

    def build():
        builder = CustomerStreamBuilder(stream_offsets, stream_items, stream_weeks, use_native=ours)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            builder.add(key[lo:hi], week[lo:hi], offsets[lo:hi + 1], items)

    measure(benchmark, build, device=device, group=f"customer streams kernel {n_baskets:,} baskets", impl=impl,
            ours=ours, baskets=n_baskets)
    benchmark.extra_info["baskets_per_s"] = round(n_baskets / benchmark.stats.stats.median)
