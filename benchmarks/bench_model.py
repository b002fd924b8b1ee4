"""End-to-end training throughput of the WorldModel (SPEC 7 "training samples/s, Triton vs PyTorch path").

One training step = forward, ``WorldModelLoss`` with every task (focal through linear_focal_loss, contrastive,
aux heads) and backward, on a fixed batch of random training samples (history up to 256 items, no length
bucketing: the slow case). ``samples_per_s`` (batch / median step time) is stored in each entry's extra_info.
  * CPU: the ``small`` preset, batch 32, fp32; backends ``native`` (the C++ selective scan; what ``auto`` picks
    when the extension is built, so ours) and ``torch`` (the PyTorch path, MPS and CPUs without the extension).
  * CUDA (``--device cuda``): the ``default`` preset (~21M parameters), batch 256, bf16 autocast as the trainer
    runs it; backends ``triton`` (ours, auto) and ``torch``.
  * ``--quick``: the ``tiny`` preset, batch 8, for a dry run.
The backend switch moves every op that has the backend (selective_scan everywhere; the focal and contrastive
losses on CUDA; on CPU the causal conv too: C++ under ``native``, F.conv1d under ``torch``); on CUDA the causal
conv follows its own rule (causal-conv1d when installed, else F.conv1d).

Data: the demo-size synthetic set, shared with bench_loader (``.benchmarks/loader-cache-2000x60``; ~30 s to
generate once); ``--quick`` uses 300 customers and 20 weeks.

    .venv/bin/python -m pytest benchmarks/bench_model.py --device cpu --benchmark-json benchmarks/results/model-cpu.json
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from generated_data import generated_cache
from harness import measure
from retailsim import native
from retailsim.data.batching import CollateArrays, collate
from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache, product_category_from_cache
from retailsim.ops import set_backend



def setting(device: torch.device, quick: bool) -> tuple[str, int]:
    """(preset, batch size) measured on this device."""
    if quick:
        return "tiny", 8
    return ("default", 256) if device.type == "cuda" else ("small", 32)


def backends_for(device: torch.device) -> tuple[str, ...]:
    return ("triton", "torch") if device.type == "cuda" else ("native", "torch")


@pytest.fixture(scope="module")
def cache(quick):
    return generated_cache(*((300, 20) if quick else (2000, 60)))


@pytest.mark.parametrize("impl", ["native", "triton", "torch"])
def test_training_step_samples_per_s(benchmark, impl, cache, device, quick):
    if impl not in backends_for(device):
        pytest.skip(f"backend {impl} is not measured on {device.type}")
    if impl == "native" and not native.available():
        pytest.skip("native extension not built (or RETAILSIM_NATIVE=0)")
    from retailsim.train.loss import WorldModelLoss

    preset, batch_size = setting(device, quick)
    arrays = CollateArrays.from_cache(cache, "train")
    samples = np.random.default_rng(0).integers(0, arrays.n_baskets, batch_size)
    batch = collate(arrays, samples, seed=0, epoch=0, train=True).to(device)
    torch.manual_seed(0)
    config = WorldModelConfig.from_name(preset, **data_sizes_from_cache(cache))
    model = WorldModel(config, product_category_from_cache(cache)).to(device).train()
    loss_fn = WorldModelLoss()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    set_backend(impl)
    auto_pick = "triton" if device.type == "cuda" else ("native" if native.available() else "torch")

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            output = model(batch)
            loss, _ = loss_fn(model, batch, output)
        loss.backward()

    try:
        measure(benchmark, step, device=device, group=f"model train step {preset} b{batch_size}", impl=impl,
                ours=impl == auto_pick, rounds=3 if quick else 10, cuda_reps=10, preset=preset, batch=batch_size,
                parameters=model.num_parameters())
    finally:
        set_backend(None)
    benchmark.extra_info["samples_per_s"] = round(batch_size / benchmark.stats.stats.median, 1)
