"""Timing and peak-memory measurement shared by every benchmark suite, the same for ours and every peer.

Each measurement is one pytest-benchmark entry tagged with ``group`` (the problem: op, shape, dtype, pass),
``impl`` (who computed it) and ``ours`` (RetailSim's own path), so ``report.py`` can print each peer's time as
a ratio against ours measured in the same run.

On CUDA, three times per entry, each named for what it measures:

* ``device_ms``: the GPU's own time. The call (forward + backward) is captured once in a CUDA graph and the
  graph replayed ``cuda_reps`` times, each replay between two CUDA events with the L2 cache flushed before it
  (a write of twice its size), never synchronising in between. Host issue time and launch gaps are gone, so
  a small problem measures the kernels, not Python. A call that cannot be captured (one that synchronises the
  host, e.g. with ``.item()``) gets ``device_ms = None`` and the reason in ``graph_error``.
* ``kernel_ms``: the sum of the durations of the CUDA kernels (and memcpy/memset) ``torch.profiler`` records
  per call, eager; ``launches`` is how many of them one call issues.
* ``host_ms``: host-inclusive latency, pytest-benchmark's wall clock around one eager call and a synchronize
  (``rounds`` of them): what a Python caller waits for.

Each is recorded as ``{"p20", "median", "p80"}``. With ``work=Work(...)`` (the least a perfect implementation
moves and computes) the entry also gets ``floor_ms`` on a known GPU (``retailsim.ops.report.hardware``:
bytes / bandwidth, FLOPs / tensor-core peak, exps / MUFU rate; datasheet constants) and ``floor_fraction`` =
floor / median device time. pytest-benchmark's own statistics are the host-inclusive ones on every device.
CPU peak memory is the rise of the process's peak RSS during one call.
"""
from __future__ import annotations

import bisect
import gc
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from retailsim.ops.report import hardware


@dataclass(frozen=True)
class Work:
    """The least one call must do: bytes through device memory, matrix-product FLOPs (tensor cores), other
    FLOPs, and exponentials. ``tc_peak`` names the tensor-core rate that applies ("bf16" or "tf32")."""

    bytes: float
    tc_flops: float = 0.0
    fp32_flops: float = 0.0
    exps: float = 0.0
    tc_peak: str = "bf16"


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


def quantiles(times_ms: list[float]) -> dict | None:
    """p20, median and p80 of a list of times (linear interpolation between order statistics)."""
    if not times_ms:
        return None
    ordered = sorted(times_ms)

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"p20": round(at(0.2), 4), "median": round(statistics.median(ordered), 4), "p80": round(at(0.8), 4)}


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


def host_latency_ms(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    """Wall-clock times of ``fn`` + synchronize: host issue time and device time together."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
    return torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)


def cuda_graph_ms(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    """Device time of ``fn`` per replay of a CUDA graph of it, L2 flushed before each replay (not timed)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # a call on a side stream first, as capture requires
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = _l2_flush_buffer(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    graph.replay()
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    times = [start.elapsed_time(end) for start, end in events]
    del graph
    return times


def profiled_kernels(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[list[float], float]:
    """(per-call sums of GPU kernel/memcpy/memset durations in ms, device operations per call) from
    ``torch.profiler`` over ``reps`` eager calls, each marked with a ``record_function`` span."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for rep in range(reps):
            with record_function(f"{_REP_MARK}{rep}"):
                fn()
            torch.cuda.synchronize(device)  # so that every kernel of a call starts before the next call's span
    events = prof.events()
    starts = sorted(e.time_range.start for e in events
                    if e.name.startswith(_REP_MARK) and e.device_type == DeviceType.CPU)
    per_call = [0.0] * len(starts)
    launched = 0
    for event in events:
        if event.device_type != DeviceType.CUDA or event.name.startswith(_REP_MARK):  # skip the GPU-side mark
            continue
        launched += 1
        call = max(0, bisect.bisect_right(starts, event.time_range.start) - 1)
        per_call[call] += event.time_range.elapsed_us() / 1e3
    return per_call, launched / max(1, reps)


_REP_MARK = "retailsim_call_"


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


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
    work: Work | None = None,
    **extra,
) -> None:
    """Time ``fn`` (which must return after its work is issued) as described in the module docstring, and
    record its peak memory."""

    def call():
        fn()
        synchronize(device)

    call()  # warm-up: compilation, autotuning, allocator growth
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, ours=ours, device=device_name(device), **extra)
    benchmark.extra_info["peak_mem_mb"] = _mb(peak_memory_bytes(call, device))
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    if device.type == "cuda":
        host = _benchmark_times_ms(benchmark) or host_latency_ms(fn, device, rounds)
        benchmark.extra_info["host_ms"] = quantiles(host)
        _measure_cuda(benchmark.extra_info, fn, device, cuda_reps, work)


def _benchmark_times_ms(benchmark) -> list[float] | None:
    """The host-inclusive round times pytest-benchmark just took (None when it was disabled)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    data = getattr(stats, "data", None)
    return [t * 1e3 for t in data] if data else None


def _measure_cuda(info: dict, fn, device: torch.device, reps: int, work: Work | None) -> None:
    try:
        info["device_ms"] = quantiles(cuda_graph_ms(fn, device, reps))
    except Exception as error:  # noqa: BLE001 - a call that cannot be captured still gets its other times
        info["device_ms"] = None
        info["graph_error"] = _first_line(error)
        torch.cuda.synchronize(device)
    try:
        per_call, launches = profiled_kernels(fn, device, min(reps, 5))
        info["kernel_ms"] = quantiles(per_call)
        info["launches"] = round(launches, 1)
    except Exception as error:  # noqa: BLE001 - the profiler is a second opinion, never a reason to fail
        info["kernel_ms"] = None
        info["profiler_error"] = _first_line(error)
    target = hardware.target_for_device(torch.cuda.get_device_name(device))
    if work is not None and target is not None:
        floor = hardware.floor_ms(target, work.bytes, work.tc_flops, work.fp32_flops, work.exps, work.tc_peak)
        info["floor_ms"] = round(floor, 4)
        info["floor_target"] = target.name
        measured = (info.get("device_ms") or info.get("kernel_ms") or {}).get("median")
        if measured:
            info["floor_fraction"] = round(floor / measured, 3)


def _mb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 2)
