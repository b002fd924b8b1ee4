"""Turns a pytest-benchmark JSON file into a Markdown table: per problem, each implementation's times (on CUDA:
device time, profiler kernel sum, host latency, launches, fraction of the floor; see harness.py), peak memory
and speed relative to RetailSim's own path measured in the same run.

    python benchmarks/report.py results.json --out results.md
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def _median(stat) -> float | None:
    """A recorded time: {"p20", "median", "p80"} (current harness) or a bare median (older result files)."""
    if stat is None:
        return None
    return float(stat["median"]) if isinstance(stat, dict) else float(stat)


def median_ms(entry: dict) -> float:
    """The time an entry is compared by: device time (CUDA graph), else the profiler's kernel sum, else the
    host-inclusive median pytest-benchmark measured."""
    extra = entry.get("extra_info", {})
    for key in ("device_ms", "kernel_ms"):
        value = _median(extra.get(key))
        if value is not None:
            return value
    return float(entry["stats"]["median"]) * 1e3


def _spread(stat) -> str:
    if stat is None:
        return "—"
    if not isinstance(stat, dict):
        return f"{float(stat):.3f}"
    return f"{stat['median']:.3f} ({stat['p20']:.3f}–{stat['p80']:.3f})"


def _host(entry: dict) -> dict | None:
    extra = entry.get("extra_info", {})
    if extra.get("host_ms") is not None:
        return extra["host_ms"]
    stats = entry.get("stats", {})
    if "median" not in stats:
        return None
    return {"p20": stats.get("q1", stats["median"]) * 1e3, "median": stats["median"] * 1e3,
            "p80": stats.get("q3", stats["median"]) * 1e3}


def render(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for entry in data.get("benchmarks", []):
        groups[entry.get("group") or entry["name"]].append(entry)
    devices = sorted({e.get("extra_info", {}).get("device", "?") for e in data.get("benchmarks", [])})
    machine = data.get("machine_info", {})
    on_gpu = any("host_ms" in e.get("extra_info", {}) for e in data.get("benchmarks", []))
    lines = [
        f"# Benchmarks — {', '.join(devices) or 'no entries'}",
        "",
        f"Date: {data.get('datetime', '?')}; Python {machine.get('python_version', '?')}; "
        f"host {machine.get('node', '?')}.",
        "",
    ]
    if on_gpu:
        lines += [
            "Times in ms as median (p20–p80). `device` = replays of a CUDA graph of the call, L2 flushed before "
            "each (— when the call cannot be captured: `graph_error` in the JSON says why); `kernels` = sum of "
            "the call's GPU kernel durations from torch.profiler; `host` = host-inclusive latency of an eager "
            "call (Python issue time included); `launches` = GPU operations per call; `% floor` = the hardware "
            "floor (datasheet bytes/bandwidth, FLOPs/peak) over the device time; `vs ours` = that row's time / "
            "RetailSim's (> 1: RetailSim is faster), by device time where both have one; `peak MB` = extra "
            "memory at the peak of one call.",
            "",
            "| problem | implementation | device | kernels | host | launches | % floor | vs ours | peak MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += [
            "`time` = host-inclusive median (p25–p75 from pytest-benchmark's quartiles; older CUDA files: the "
            "median of CUDA events around each Python call); `vs ours` = that row's "
            "time / RetailSim's time (> 1: RetailSim is faster); `peak MB` = extra memory at the peak of one call.",
            "",
            "| problem | implementation | time (ms) | vs ours | peak MB |",
            "|---|---|---:|---:|---:|",
        ]
    for group in sorted(groups):
        entries = sorted(groups[group], key=median_ms)
        ours = [e for e in entries if e.get("extra_info", {}).get("ours")]
        ours_ms = median_ms(ours[0]) if ours else None
        for entry in entries:
            extra = entry.get("extra_info", {})
            ms = median_ms(entry)
            ratio = f"{ms / ours_ms:.2f}×" if ours_ms else "—"
            peak = extra.get("peak_mem_mb")
            peak = "—" if peak is None else peak
            name = extra.get("impl", entry["name"]) + (" **(ours)**" if extra.get("ours") else "")
            if on_gpu:
                fraction = extra.get("floor_fraction")
                floor = "—" if fraction is None else f"{100 * fraction:.0f}%"
                launches = extra.get("launches", "—")
                lines.append(f"| {group} | {name} | {_spread(extra.get('device_ms'))} | "
                             f"{_spread(extra.get('kernel_ms'))} | {_spread(_host(entry))} | {launches} | {floor} | "
                             f"{ratio} | {peak} |")
            else:
                # Result files from before the device-time harness hold CUDA-event times around the Python call
                # (host-inclusive too) as a bare device_ms.
                legacy = extra.get("device_ms")
                lines.append(f"| {group} | {name} | {_spread(legacy if legacy is not None else _host(entry))} | "
                             f"{ratio} | {peak} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"error: cannot read benchmark results {args.json}: {error}", file=sys.stderr)
        return 2
    text = render(data)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
