"""Where a CPU training step of the demo goes: torch.profiler over real training batches of the demo's setting
(small preset, batch 128, every task on, the trainer's AdamW and clipping), grouped by model part.

    .venv/bin/python benchmarks/profile_training_step.py --data runs/demo/cache --threads 2 [--steps 8]

Prints a Markdown table (milliseconds per step by part, and the top operators) and writes it with the raw
operator table to benchmarks/results/ (``cpu-<date>-training-profile.md``). Parts are the profiler's
``record_function`` scopes this script puts around the loader, the forward, the loss, the backward and the
optimizer; inside the forward and backward the operators are attributed by name (the C++ scan and conv, the
attention, the matmuls, ...).
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from retailsim.data.loader import make_loader, set_epoch
from retailsim.train.loss import WorldModelLoss
from retailsim.train.trainer import TrainStep, build_world_model, parameter_groups

# operator name fragment -> group (first match wins); what the C++ extension and the model's parts dispatch
GROUPS = (
    ("SelectiveScan", "selective scan (C++)"), ("selective_scan", "selective scan (C++)"),
    ("CausalConv", "causal conv (C++)"), ("causal_conv", "causal conv (C++)"),
    ("scaled_dot_product", "attention"), ("_flash_attention", "attention"), ("softmax", "softmax/attention"),
    ("LinearFocal", "focal loss"), ("focal", "focal loss"), ("Contrastive", "contrastive loss"),
    ("contrastive", "contrastive loss"),
    ("addmm", "matmul"), ("mm", "matmul"), ("bmm", "matmul"), ("linear", "matmul"),
    ("embedding", "embeddings"), ("layer_norm", "norms"), ("rms_norm", "norms"), ("norm", "norms"),
    ("copy_", "copies"), ("cat", "copies"), ("index", "indexing/gather"), ("gather", "indexing/gather"),
    ("scatter", "indexing/gather"),
)


def group_of(name: str) -> str:
    for fragment, group in GROUPS:
        if fragment in name:
            return group
    return "elementwise/other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/demo/cache"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_world_model(args.preset, args.data, False)
    step = TrainStep(model, WorldModelLoss()).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-3)
    loader = make_loader(args.data, "train", batch_size=args.batch_size, train=True, seed=0, mask_rate=0.15,
                         max_history=model.config.max_history)
    set_epoch(loader, 2)
    batches = iter(loader)

    def one_step() -> int:
        with record_function("## loader"):
            batch = next(batches)
        with record_function("## forward"):
            output = model(batch)
        with record_function("## loss"):
            total, _ = step.loss(model, batch, output, all_tasks=True)
        with record_function("## backward"):
            total.backward()
        with record_function("## optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return len(batch)

    for _ in range(2):
        one_step()
    samples, started = 0, time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(args.steps):
            samples += one_step()
    wall = time.perf_counter() - started
    events = prof.key_averages()
    phases = {e.key[3:]: e.cpu_time_total / 1e3 / args.steps for e in events if e.key.startswith("## ")}
    groups: dict[str, float] = defaultdict(float)
    for event in events:  # self time, so nothing counts twice
        if not event.key.startswith("## "):
            groups[group_of(event.key)] += event.self_cpu_time_total / 1e3 / args.steps
    ms_per_step = wall * 1e3 / args.steps
    lines = [f"# CPU training step profile ({dt.date.today()}, {platform.processor() or platform.machine()}, "
             f"{args.threads} threads, torch {torch.__version__})", "",
             f"`python benchmarks/profile_training_step.py --data {args.data} --threads {args.threads} "
             f"--steps {args.steps}`: preset {args.preset}, batch {args.batch_size}, every task on. "
             f"{ms_per_step:.0f} ms a step under the profiler = {samples / wall:.1f} samples/s.", "",
             "| phase | ms / step | share |", "|---|---:|---:|"]
    for name in ("loader", "forward", "loss", "backward", "optimizer"):
        lines.append(f"| {name} | {phases.get(name, 0):.1f} | {phases.get(name, 0) / ms_per_step:.0%} |")
    lines += ["", "| operator group (self time, forward + backward) | ms / step | share |", "|---|---:|---:|"]
    for name, ms in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {ms:.1f} | {ms / ms_per_step:.0%} |")
    top = events.table(sort_by="self_cpu_time_total", row_limit=25)
    text = "\n".join(lines)
    print(text)
    print(top)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu-{dt.date.today()}-training-profile.md"
    path.write_text(text + "\n\nTop operators (self CPU time over all profiled steps):\n\n```\n" + top + "\n```\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
