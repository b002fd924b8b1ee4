"""The C++ CPU selective scan against the CPU peers a user would pick instead (SPEC 6.2, 7): the step-by-step
reference with autograd (our parity reference) and mambapy's parallel scan (pure PyTorch), forward and
forward+backward (gradients of every input), time and peak memory, on this machine's CPU.

Rows: ``cpp`` (ours) is the public ``selective_scan`` forced onto the C++ kernel with the default thread count
(``torch.get_num_threads()``); ``cpp-1thread`` is the same pinned to one thread, to show the scaling.
Shapes: SPEC's CPU shape (batch 8, dim 256, L 256, N 16) and the model's scan, (batch 32, d_inner 512, L 256,
N 16) unless the model config says otherwise. ``--quick`` shrinks both to seconds.

    .venv/bin/python -m pytest benchmarks/bench_selective_scan_native.py --device cpu \\
        --benchmark-json benchmarks/results/selective_scan_native.json
    .venv/bin/python benchmarks/report.py benchmarks/results/selective_scan_native.json
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import measure
from retailsim.ops import backend, selective_scan
from retailsim.ops.selective_scan import native
from retailsim.ops.selective_scan.reference import discretize_delta, selective_scan_ref

SPEC_CPU_SHAPE = (8, 256, 256, 16)  # (batch, dim, L, N)
QUICK_SHAPES = ((2, 8, 32, 4), (2, 12, 40, 16))
GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def model_shape() -> tuple[int, int, int, int]:
    """(batch 32, d_inner, max_history, d_state) of the `small` preset, (32, 512, 256, 16) until it exists."""
    try:
        from retailsim.model.config import WorldModelConfig  # issue 6

        config = WorldModelConfig.from_name("small")
        return (32, 2 * config.d_model, getattr(config, "max_history", 256), getattr(config, "d_state", 16))
    except (ImportError, AttributeError, KeyError, ValueError):
        return (32, 512, 256, 16)


def shapes(quick: bool):
    return QUICK_SHAPES if quick else (SPEC_CPU_SHAPE, model_shape())


def problem(shape, seed=0):
    """Mamba-block inputs: softplus Δ with bias, D skip, z gate; fp32 throughout (the CPU model's dtype)."""
    batch, dim, length, dstate = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=gen) * scale

    return dict(
        u=randn(batch, dim, length), delta=randn(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, dstate, generator=gen) + 0.5), B=randn(batch, dstate, length),
        C=randn(batch, dstate, length), D=randn(dim), z=randn(batch, dim, length),
        delta_bias=randn(dim, scale=0.3), delta_softplus=True,
    )


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mambapy's Blelloch scan on (batch, L, dim, N): h = pscan(exp(Δ A), Δ B u), y = (h·C) + D u, gated."""
    from mambapy.pscan import pscan

    delta = discretize_delta(delta, delta_bias, delta_softplus).transpose(1, 2)   # (batch, L, dim)
    x = u.transpose(1, 2)                                                          # (batch, L, dim)
    decay = torch.exp(delta.unsqueeze(-1) * A)                                     # (batch, L, dim, N)
    drive = (delta * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)             # (batch, L, dim, N)
    states = pscan(decay, drive)                                                   # (batch, L, dim, N)
    y = (states * C.transpose(1, 2).unsqueeze(2)).sum(-1) + D * x                  # (batch, L, dim)
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)                         # (batch, dim, L)


def cpp_scan(**inputs):
    return selective_scan(**inputs)


IMPLS = ("cpp", "cpp-1thread", "reference", "mambapy")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", [0, 1], ids=["spec", "model"])
def test_selective_scan_native(benchmark, device, quick, impl, passes, case):
    if device.type != "cpu":
        pytest.skip("the C++ selective scan is a CPU kernel")
    if impl.startswith("cpp") and not native.available():
        pytest.skip("retailsim._native with the selective_scan kernel is not available")
    if impl == "mambapy":
        pytest.importorskip("mambapy", reason="mambapy is not installed (pip install mambapy)")
    fn = {"cpp": cpp_scan, "cpp-1thread": cpp_scan, "reference": selective_scan_ref, "mambapy": mambapy_scan}[impl]
    shape = shapes(quick)[case]
    inputs = problem(shape)
    leaves = [inputs[k].requires_grad_(True) for k in GRAD_INPUTS] if passes == "fwd+bwd" else []
    dout = torch.randn(shape[:3], generator=torch.Generator().manual_seed(1))

    def call():
        out = fn(**inputs)
        return torch.autograd.grad(out, leaves, dout) if leaves else out

    name = "b{}-d{}-L{}-N{}".format(*shape)
    backend.set_backend("native" if impl.startswith("cpp") else None)
    native.set_num_threads(1 if impl == "cpp-1thread" else None)
    try:
        with torch.enable_grad() if leaves else torch.no_grad():
            measure(benchmark, call, device=device, group=f"selective_scan[cpu] {name} float32 {passes}",
                    impl=impl, ours=impl == "cpp", rounds=5 if impl.startswith("cpp") else 3,
                    threads=native.get_num_threads())
    finally:
        backend.set_backend(None)
        native.set_num_threads(None)
