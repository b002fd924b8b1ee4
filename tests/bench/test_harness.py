"""The benchmark harness and its report: quantiles, the Markdown table for CUDA and CPU entries, and on a GPU
the device-time path (CUDA graph, profiler kernel sum, launches, floor) on a real call."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import harness  # noqa: E402
import report  # noqa: E402


def test_quantiles_interpolate_between_order_statistics():
    assert harness.quantiles([5.0, 1.0, 3.0, 2.0, 4.0]) == {"p20": 1.8, "median": 3.0, "p80": 4.2}
    assert harness.quantiles([]) is None


def _entry(impl, ours, **extra):
    return {"name": impl, "group": "focal 8x16", "stats": {"median": 2e-3, "q1": 1e-3, "q3": 3e-3},
            "extra_info": {"impl": impl, "ours": ours, "device": "NVIDIA H200", "peak_mem_mb": 1.0, **extra}}


def test_report_ranks_cuda_rows_by_device_time_and_says_when_a_graph_failed():
    times = {"p20": 0.09, "median": 0.1, "p80": 0.11}
    data = {"benchmarks": [
        _entry("ours", True, device_ms=times, kernel_ms=times, host_ms=times, launches=3.0, floor_fraction=0.5),
        _entry("peer", False, device_ms=None, graph_error="RuntimeError: sync", host_ms=times, launches=7.0,
               kernel_ms={"p20": 0.18, "median": 0.2, "p80": 0.22}),
    ]}
    text = report.render(data)
    ours_row = next(line for line in text.splitlines() if "**(ours)**" in line)
    peer_row = next(line for line in text.splitlines() if "| peer |" in line)
    assert "0.100 (0.090–0.110)" in ours_row and "| 50% |" in ours_row
    # The peer could not be captured: it is compared by its profiler kernel sum, twice ours.
    assert "| — |" in peer_row and "2.00×" in peer_row and "| 7.0 |" in peer_row


def test_report_of_cpu_entries_uses_the_host_times():
    data = {"benchmarks": [_entry("ours", True), _entry("peer", False)]}
    text = report.render(data)
    assert "2.000 (1.000–3.000)" in text and "device |" not in text


class FakeBenchmark:
    """What measure() uses of pytest-benchmark's fixture: group, extra_info and pedantic."""

    def __init__(self):
        self.group, self.extra_info = None, {}

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        for _ in range(rounds + warmup_rounds):
            fn()


def test_measure_on_cpu_records_memory_and_host_time_only():
    bench = FakeBenchmark()
    calls = []
    harness.measure(bench, lambda: calls.append(1), device=torch.device("cpu"), group="g", impl="i",
                    work=harness.Work(bytes=1e6), rounds=2)
    assert bench.group == "g" and bench.extra_info["impl"] == "i" and "device_ms" not in bench.extra_info
    assert len(calls) == 1 + 1 + 3  # warm-up, the peak-memory call, pedantic's rounds + its warm-up


@pytest.mark.cuda
def test_measure_on_cuda_gives_device_time_kernels_launches_and_floor():
    from retailsim.ops import focal_loss

    logits = torch.randn(2048, 5003, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, 5003, (2048,), device="cuda")

    def step():
        logits.grad = None
        focal_loss(logits, target).backward()

    bench = FakeBenchmark()
    work = harness.Work(bytes=2 * logits.numel() * 2, exps=logits.numel())
    harness.measure(bench, step, device=torch.device("cuda"), group="g", impl="ours", work=work, cuda_reps=10)
    info = bench.extra_info
    assert info["device_ms"] is not None, info.get("graph_error")
    assert 0 < info["device_ms"]["p20"] <= info["device_ms"]["median"] <= info["device_ms"]["p80"]
    assert info["kernel_ms"]["median"] > 0 and info["launches"] >= 1
    if harness.hardware.target_for_device(torch.cuda.get_device_name()) is not None:
        assert 0 < info["floor_fraction"] <= 1.5
