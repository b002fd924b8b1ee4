"""Turns a pytest-benchmark JSON file into a Markdown table: per problem, each implementation's median time,
peak memory and speed relative to RetailSim's own path measured in the same run.

    python benchmarks/report.py results.json --out results.md
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def median_ms(entry: dict) -> float:
    extra = entry.get("extra_info", {})
    if extra.get("device_ms") is not None:
        return float(extra["device_ms"])
    return float(entry["stats"]["median"]) * 1e3


def render(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for entry in data.get("benchmarks", []):
        groups[entry.get("group") or entry["name"]].append(entry)
    devices = sorted({e.get("extra_info", {}).get("device", "?") for e in data.get("benchmarks", [])})
    machine = data.get("machine_info", {})
    lines = [
        f"# Benchmarks — {', '.join(devices) or 'no entries'}",
        "",
        f"Date: {data.get('datetime', '?')}; Python {machine.get('python_version', '?')}; "
        f"host {machine.get('node', '?')}.",
        "",
        "`time` is the median (CUDA: CUDA-event timed); `vs ours` = that row's time / RetailSim's time "
        "(> 1: RetailSim is faster); `peak MB` = extra memory at the peak of one call.",
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
            name = extra.get("impl", entry["name"]) + (" **(ours)**" if extra.get("ours") else "")
            lines.append(f"| {group} | {name} | {ms:.3f} | {ratio} | {'—' if peak is None else peak} |")
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
