"""Training throughput with a busy neighbour, side by side with idle, in one run (issue: a user's laptop always
has something else running).

Each measurement is a real `python -m retailsim.train` on the demo cache (small preset, batch 128, the demo's
learning rate, two threads, the same seed, so every run trains on the same batches) stopped after
``--steps`` optimizer steps; its samples/s is the mean of the metrics log's 10-step windows after the first
(which holds the warm-up). "Loaded" runs it next to one process spinning on a core (`while True: pass`), the
neighbour every user has. Rounds alternate idle and loaded so that drift of the machine hits both alike.

Wait policies compared: PASSIVE (what the `retailsim` CLI sets when the user has not, see
``retailsim.cli.prefer_passive_cpu_waits``) and ACTIVE (OpenMP threads spin at every barrier).

    .venv/bin/python benchmarks/training_under_load.py --data runs/demo/cache [--rounds 2 --steps 40]

Writes benchmarks/results/cpu-<date>-training-under-load.{json,md}. The issue's bar: loaded >= 40% of idle.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = (("idle", "PASSIVE"), ("loaded", "PASSIVE"), ("loaded", "ACTIVE"))


def train_rate(data: Path, steps: int, threads: int, policy: str, loaded: bool) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "retailsim.train", "--data", str(data), "--out", out, "--preset", "small",
                   "--batch-size", "128", "--lr", "2e-3", "--epochs", "3", "--seed", "0", "--max-steps", str(steps),
                   "--log-every", "10", "--val-batches", "1", "--threads", str(threads), "--quiet", "--overwrite"]
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
        try:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "OMP_WAIT_POLICY": policy})
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    windows = [r["samples_per_s"] for r in records if r["kind"] == "step"]
    return statistics.fmean(windows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/cache"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rates: dict[str, list[float]] = {f"{load} {policy}": [] for load, policy in MODES}
    for round_index in range(args.rounds):
        for load, policy in MODES:
            rate = train_rate(args.data, args.steps, args.threads, policy, load == "loaded")
            rates[f"{load} {policy}"].append(rate)
            print(f"round {round_index + 1}: {load:<6} {policy:<7} {rate:6.1f} samples/s", flush=True)
    idle = statistics.median(rates["idle PASSIVE"])
    rows = [{"mode": mode, "samples_per_s": values, "median": statistics.median(values),
             "of_idle": statistics.median(values) / idle} for mode, values in rates.items()]
    result = {"date": str(dt.date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cores, "
              f"{_cpu_name()}", "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "rows": rows}
    lines = [f"# Training under load ({result['date']}, {result['machine']})", "",
             f"`python benchmarks/training_under_load.py --rounds {args.rounds} --steps {args.steps} --threads "
             f"{args.threads}`: small preset, batch 128, samples/s of the steady windows; loaded = next to one "
             f"process spinning on a core.", "", "| mode | samples/s (each round) | median | of idle |",
             "|---|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {', '.join(f'{v:.1f}' for v in row['samples_per_s'])} | "
                     f"{row['median']:.1f} | {row['of_idle']:.0%} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu-{result['date']}-training-under-load"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
