"""The offline kernel report (`make kernel-report`): every Triton kernel of retailsim.ops at the benchmark
shapes, compiled for sm_80 and sm_90 on this machine (no GPU needed), written to
benchmarks/results/kernel-report.{json,md}. Times in it are ESTIMATES (model in retailsim/ops/report/hardware.py).

    python benchmarks/kernel_report.py [--arch 80 90] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from retailsim.ops.report import ARCHS, EXCEPTIONS, build, check, hardware
from retailsim.ops.report.cases import all_cases
from retailsim.ops.report.compile import tool_versions

# Device-side figures measured before (host-inclusive CUDA-event medians, fwd+bwd, older commits: see
# benchmarks/results/README.md), placed beside the estimates. (op, shape, dtype) -> (ms, file).
MEASURED_H100 = {
    ("focal_loss", "2048x5003", "bfloat16"): (0.845, "h100-2026-11-27-focal_loss.md (gamma=2, commit 3a0db31)"),
    ("linear_focal_loss", "2048x512x5003", "bfloat16"): (0.880, "h100-2026-11-27-focal_loss.md (gamma=2)"),
    ("linear_focal_loss", "8192x512x131072", "bfloat16"): (21.548, "h100-2026-11-27-focal_loss.md (gamma=2)"),
    ("contrastive_loss", "4096x4096x512", "bfloat16"): (2.384, "h100-2026-11-27-contrastive_loss.md (commit ab8323f)"),
    ("contrastive_loss", "4096x4096x512", "float32"): (23.855, "h100-2026-11-27-contrastive_loss.md (IEEE fp32 then)"),
}


def _shape(record) -> str:
    return "x".join(map(str, record["shape"]))


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in config.items()
                     if v is not None)


def markdown(records, failures, excused, versions) -> str:
    lines = [
        "# Kernel report (offline: compiled for CUDA targets on a CPU machine; times are ESTIMATES)", "",
        f"Triton {versions['triton']}, ptxas {versions['ptxas']}; written "
        f"{datetime.date.today().isoformat()} by `make kernel-report`.", "",
        "Estimate model (`retailsim/ops/report/hardware.py`): floor = max(minimum bytes / HBM bandwidth, minimum "
        "matrix FLOPs / tensor-core peak, elementwise FLOPs / CUDA-core peak, exps / MUFU rate); issue = "
        "ceil(grid / SMs) x warps x warp-instructions per program / (4 schedulers x clock); estimate = max(floor, "
        "executed matrix FLOPs / peak, issue). Not modelled: latency (dependent shuffle chains, loads no other "
        "warp hides), caches (each minimum byte moves once), dual issue. Targets: "
        + "; ".join(f"{t.arch} = {t.name}, {t.sms} SMs, {t.clock_ghz} GHz, {t.bandwidth_tbs} TB/s, "
                    f"bf16 {t.tc_bf16_tflops} TFLOP/s" for t in hardware.TARGETS.values()) + ".", "",
        "## Kernels", "",
        "| kernel | arch | shape | dtype | launches | grid | warps | regs | spill B | smem B | CTAs/SM | hot loop: instr / SHFL / BAR / MUFU / MMA / LDL+STL | MMA in kernel | estimate ms | floor ms | est/floor |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if "kernel" not in r:
            continue
        loop = r["hot_loop"]
        loop_text = (f"{loop['instructions']} / {loop['shfl']} / {loop['bar']} / {loop['mufu']} / {loop['mma']} / "
                     f"{loop['local']}") if loop else "no loop"
        lines.append(
            f"| {r['kernel']} | {r['arch']} | {_shape(r)} | {r['dtype']} | {r['launches']} | {'x'.join(map(str, r['grid']))} | "
            f"{r['num_warps']} | {r['registers']} | {r['spill_bytes']} | {r['smem_bytes']} | {r['ctas_per_sm']} | "
            f"{loop_text} | {r['mma_instructions']} | {r['estimate_ms']} | {r['floor_ms']} | {r['estimate_over_floor']} |")
    lines += ["", "## Ops: launches and host syncs per fwd+bwd (CUDA path, counted on fake CUDA tensors)", "",
              "`config_for` = what the op's Triton launcher answers for this shape, dtype and arch (the checks "
              "fail when a launch used anything else).", "",
              "| op | arch | shape | dtype | launches (Triton + aten) | budget | host syncs | config_for | Triton estimate ms | measured H100 ms (host-inclusive, older commit) |",
              "|---|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in records:
        if "kernel" in r:
            continue
        measured = MEASURED_H100.get((r["op"], _shape(r), r["dtype"])) if r["arch"] == "sm_90" else None
        measured_text = f"{measured[0]} ({measured[1]})" if measured else ""
        lines.append(
            f"| {r['op']} | {r['arch']} | {_shape(r)} | {r['dtype']} | {r['launches_per_fwd_bwd']} "
            f"({r['triton_launches']} + {r['launches_per_fwd_bwd'] - r['triton_launches']}) | {r['launch_budget']} | "
            f"{r['host_syncs']} | {_config_text(r.get('config', {}))} | {r['triton_estimate_ms']} | {measured_text} |")
    lines += ["", "The measured figures are host-inclusive (CUDA events around the Python call, synchronised per "
              "repeat) and come from older commits: at these sizes they time the host's launches, not the GPU, "
              "so they are an upper bound the estimates should sit under, not a check of them.", "",
              "## Checks", "", f"Failures: {len(failures)}", *[f"- {f}" for f in failures], "",
              "Named exceptions (today's kernels; lifted by the issue named):", *[f"- {e}" for e in excused], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(hardware.TARGETS),
                        help="CUDA compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="folder for kernel-report.json and kernel-report.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_report: unset TRITON_INTERPRET; the report compiles for CUDA, it does not interpret.",
              file=sys.stderr)
        return 2
    versions = tool_versions()
    records = build(all_cases(), archs=tuple(args.arch), log=lambda line: print(line, file=sys.stderr))
    failures, excused = check(records)
    os.makedirs(args.out, exist_ok=True)
    meta = {"triton": versions["triton"], "ptxas": versions["ptxas"], "date": datetime.date.today().isoformat(),
            "estimates": "every *_ms field except measured ones is an ESTIMATE (see hardware.py)"}
    for name, text in (("kernel-report.json", json.dumps([meta, *records], indent=1, default=str)),
                       ("kernel-report.md", markdown(records, failures, excused, versions))):
        path = os.path.join(args.out, name)
        with open(path + ".tmp", "w") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
    print(f"kernel_report: {len([r for r in records if 'kernel' in r])} kernel records, {len(failures)} check "
          f"failures, {len(excused)} excused; wrote {args.out}/kernel-report.{{json,md}}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
