"""Timing and peak-memory measurement shared by every benchmark suite.

Each measurement is one pytest-benchmark entry tagged with ``group`` (the problem: op, shape, dtype, pass),
``impl`` (who computed it) and ``ours`` (RetailSim's own path), so ``report.py`` can print each peer's time as
a ratio against ours measured in the same run. GPU timings synchronise: the median of CUDA-event-timed calls
is recorded as ``device_ms``; CPU peak memory is the rise of the process's peak RSS during one call.
"""
from __future__ import annotations

import gc
import platform
import statistics
from typing import Callable

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory one call of ``fn`` needs at its peak, above what was allocated before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu" and platform.system() == "Linux":
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM, the peak resident set, to the current one
        except OSError:
            return None
        before = _rss_bytes("VmRSS:")
        fn()
        return max(0, _rss_bytes("VmHWM:") - before)
    return None


def cuda_event_median_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(
    benchmark,
    fn: Callable[[], object],
    *,
    device: torch.device,
    group: str,
    impl: str,
    ours: bool = False,
    rounds: int = 5,
    cuda_reps: int = 20,
    **extra,
) -> None:
    """Time ``fn`` (which must return after its work is issued) and record its peak memory."""

    def call():
        fn()
        synchronize(device)

    call()  # warm-up: compilation, autotuning, allocator growth
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, ours=ours, device=device_name(device), **extra)
    benchmark.extra_info["peak_mem_mb"] = _mb(peak_memory_bytes(call, device))
    if device.type == "cuda":
        benchmark.extra_info["device_ms"] = cuda_event_median_ms(fn, device, cuda_reps)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


def _mb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 2)
