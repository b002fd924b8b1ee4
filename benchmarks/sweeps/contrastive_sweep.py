"""Tile sweep of contrastive_loss's two Triton algorithms (issue 5): which algorithm and tiles to make default.

On CUDA: forward+backward at 4096 x 4096 x 512 (the SPEC shape, inputs as benchmarks/bench_contrastive_loss.py
builds them), bf16 and fp32 (TF32 off, so fp32 runs the TF32x3 products the parity path uses), for each
(algorithm, tile config) below: median of --reps CUDA-event-timed calls after warm-up, the forward alone too,
peak extra memory, registers and spills of every kernel compiled for the config, the N x M x D products the
config does (score recomputations included) and the TFLOP/s they make, and the relative error
||x - ref|| / ||ref|| of the loss and both gradients against the float64 reference (contrastive_loss_ref), next to
the same-dtype eager PyTorch error (the bar of SPEC 6.5: bf16 no worse than 2x it; fp32 1e-5, gradients 1e-4).
Configs run in the order listed and none is started after --budget seconds (compilation included), so one
short GPU call always returns a table; the skipped ones are named. Prints a table and writes JSON to
$RETAILSIM_RESULTS_DIR (default benchmarks/results/; the dry run's default is the temp folder) as
contrastive-sweep-<device>-<date>.json.

    python benchmarks/sweeps/contrastive_sweep.py             # CUDA, ~65 s budget + one config + start-up
    python benchmarks/sweeps/contrastive_sweep.py --dry-run   # CPU, Triton interpreter, tiny shape, seconds
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:  # the interpreter must be chosen before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from bench_contrastive_loss import CUDA_SHAPE, problem  # noqa: E402
from retailsim.ops import backend, contrastive_loss  # noqa: E402
from retailsim.ops.contrastive_loss import ALGORITHM_ENV, DEFAULT_ALGORITHM  # noqa: E402
from retailsim.ops.contrastive_loss import triton as fused  # noqa: E402
from retailsim.ops.contrastive_loss import triton_split  # noqa: E402
from retailsim.ops.contrastive_loss.reference import contrastive_loss_ref  # noqa: E402

DRY_SHAPE = (48, 80, 40)
KERNELS = (fused._contrastive_fwd_kernel, fused._contrastive_bwd_candidate_kernel,
           triton_split._contrastive_anchor_kernel)


def tiles(n, m, k, d, warps, stages, splits=None):
    return dict(BLOCK_N=n, BLOCK_M=m, BLOCK_K=k, BLOCK_D=d, num_warps=warps, num_stages=stages, splits=splits)


# (algorithm, dtype, tiles or None for the module's default), most informative first: the budget cuts the tail.
# split: one config drives all three kernels (stats over anchor blocks BLOCK_N x loop BLOCK_M, anchor kernel the
# same with a [BLOCK_N, BLOCK_D] accumulator, candidate kernel [BLOCK_M, BLOCK_D] looping over BLOCK_N anchors).
# Comments: registers of the split stats/anchor/candidate kernels on sm_90 compiled by Triton 3.9 offline
# (contrastive_registers.py; the H100's Triton 3.6 may differ, the table's regs/spills columns say); "spills" =
# some kernel has local-memory stack. The fused defaults spill (fused fwd 360 B, candidate 744 B).
BF16, FP32 = torch.bfloat16, torch.float32
CONFIGS = [
    ("fused", BF16, None),                            # 64x64 k64 d256 w4 s2: the measured 2.0-2.4 ms
    ("split", BF16, None),                            # 64x64 k64 d256 w8 s3: 118/186/226
    ("fused", FP32, None),
    ("split", FP32, None),                            # 64x64 k32 d128 w8 s2: 148/230/246
    ("split", BF16, tiles(64, 64, 64, 128, 8, 3)),    # 118/139/183, but 4 score recomputations, not 2
    ("fused", BF16, tiles(64, 64, 64, 256, 8, 3)),    # the fused algorithm at 8 warps: no spills either (202/226)
    ("split", BF16, tiles(64, 64, 128, 256, 8, 2)),   # 127/195/225, fewer, longer K steps
    ("split", BF16, tiles(128, 64, 64, 128, 8, 3)),   # 181/187/255, no spills
    ("fused", BF16, tiles(64, 64, 64, 128, 8, 3)),    # 161/183
    ("split", BF16, tiles(64, 64, 64, 512, 8, 2)),    # no recomputation; small spills (16/208 B)
    ("split", BF16, tiles(64, 64, 64, 64, 4, 3)),     # 178/164/252, 8 recomputations
    ("split", BF16, tiles(128, 64, 64, 256, 8, 2)),   # spills (8/232 B)
    ("fused", FP32, tiles(64, 64, 32, 128, 8, 2)),    # 236/246
    ("split", FP32, tiles(64, 64, 32, 64, 4, 2)),     # candidate spills 152 B
    ("split", BF16, tiles(64, 128, 64, 128, 8, 3)),   # candidate spills 96 B
    ("split", FP32, tiles(128, 64, 32, 64, 8, 2)),    # candidate spills 240 B
]


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shape, 1 rep")
    parser.add_argument("--budget", type=float, default=65.0, help="start no config after this many seconds")
    parser.add_argument("--reps", type=int, default=25, help="timed calls per config (median; >= 20 on CUDA)")
    parser.add_argument("--only", choices=("fused", "split"), help="one algorithm only")
    return parser.parse_args()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_ms(fn, device, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    actual, reference = actual.detach().double(), reference.detach().double()
    if not torch.isfinite(actual).all():
        return float("inf")
    denominator = reference.norm().item()
    return (actual - reference).norm().item() / (denominator if denominator > 0 else 1.0)


def compiled_kernels() -> dict:
    """{(kernel, key): (registers, spills)} of every kernel compiled so far (Triton 3.6 and 3.9: the first entry
    of ``device_caches[device]`` is the key -> CompiledKernel dict); empty under the interpreter."""
    found = {}
    try:
        for kernel in KERNELS:
            for entry in getattr(kernel, "device_caches", {}).values():
                for key, compiled in list(entry[0].items()):
                    registers = getattr(compiled, "n_regs", None)
                    if registers is not None:
                        found[(kernel.fn.__name__, str(key))] = (registers, getattr(compiled, "n_spills", None))
    except Exception as error:  # Triton's internals moved: the sweep still times, it only loses this column
        print(f"  (registers unavailable: {type(error).__name__}: {error})")
    return found


def main() -> int:
    args = arguments()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("contrastive_sweep: no CUDA GPU visible; use --dry-run to check the script on a CPU.")
        return 2
    shape = DRY_SHAPE if args.dry_run else CUDA_SHAPE
    reps, warmup = (1, 1) if args.dry_run else (max(args.reps, 20), 3)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32: TF32x3 products in ours, IEEE in the peers
    backend.set_backend("triton")
    started = time.perf_counter()
    rows, skipped, problems = [], [], {}

    def problem_for(dtype):
        """Inputs, ids, upstream-free float64 reference (loss, grads) and the same-dtype eager errors."""
        if dtype not in problems:
            anchors, candidates, ids = problem(shape, dtype, device)
            a64, c64 = (x.detach().double().requires_grad_() for x in (anchors, candidates))
            ref_loss = contrastive_loss_ref(a64, c64, **ids)
            ref = (ref_loss.detach(), *torch.autograd.grad(ref_loss, (a64, c64)))
            del a64, c64, ref_loss
            eager_loss = contrastive_loss_ref(anchors, candidates, **ids)
            eager = (eager_loss, *torch.autograd.grad(eager_loss, (anchors, candidates)))
            eager_ms = median_ms(lambda: torch.autograd.grad(contrastive_loss_ref(anchors, candidates, **ids),
                                                             (anchors, candidates)), device, reps, warmup)
            problems[dtype] = (anchors, candidates, ids, ref, [rel_err(x, r) for x, r in zip(eager, ref)], eager_ms)
        return problems[dtype]

    for algorithm, dtype, config in CONFIGS:
        name = f"{algorithm} {str(dtype).removeprefix('torch.')} {config_label(config)}"
        if args.only and algorithm != args.only:
            continue
        if time.perf_counter() - started > args.budget:
            skipped.append(name)
            continue
        anchors, candidates, ids, ref, eager_err, eager_ms = problem_for(dtype)
        os.environ[ALGORITHM_ENV] = algorithm
        before = compiled_kernels()
        config_started = time.perf_counter()
        row = dict(algorithm=algorithm, dtype=str(dtype).removeprefix("torch."), config=config or "default",
                   label=name, eager_ms=eager_ms, eager_rel_err=dict(zip(("loss", "dA", "dC"), eager_err)),
                   gemm_passes=gemm_passes(algorithm, dtype, config, device, shape[2]))
        try:
            with fused.config_override(**(config or {})):
                def step():
                    loss = contrastive_loss(anchors, candidates, **ids)
                    return loss, *torch.autograd.grad(loss, (anchors, candidates))

                out = step()  # compiles
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                row["first_call_s"] = time.perf_counter() - config_started
                row["rel_err"] = dict(zip(("loss", "dA", "dC"), (rel_err(x, r) for x, r in zip(out, ref))))
                del out
                row["ms"] = median_ms(step, device, reps, warmup)
                row["tflops"] = row["gemm_passes"] * 2 * shape[0] * shape[1] * shape[2] / (row["ms"] * 1e9)
                row["fwd_ms"] = median_ms(lambda: contrastive_loss(anchors, candidates, **ids), device, reps,
                                          warmup)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    base = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    step()
                    torch.cuda.synchronize(device)
                    row["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        except Exception as error:  # a tile shape that does not compile (shared memory, registers) is a result
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        row["kernels"] = {f"{kernel} {key[:80]}": dict(regs=regs, spills=spills)
                          for (kernel, key), (regs, spills) in compiled_kernels().items()
                          if (kernel, key) not in before}
        rows.append(row)
        print_row(row)

    os.environ.pop(ALGORITHM_ENV, None)
    summary(rows, skipped, time.perf_counter() - started)
    write_json(args, device, shape, rows, skipped, time.perf_counter() - started)
    return 0 if rows and all("error" not in row or row["config"] != "default" for row in rows) else 1


def gemm_passes(algorithm: str, dtype: torch.dtype, config, device: torch.device, dim: int) -> int:
    """N x M x D matrix products one fwd+bwd does, score recomputations included: with c = cdiv(D, BLOCK_D)
    chunks, fused = (c scores + P C) + (c scores + dS^T A) = 2c + 2; split = 1 + (c + 1) + (c + 1) = 2c + 3."""
    table = fused._CUDA_CONFIG if algorithm == "fused" else triton_split.CUDA_CONFIG
    kind = "float32" if dtype == torch.float32 else "half"
    tiles_used = dict(fused._INTERPRET_CONFIG if device.type != "cuda" else table[kind], **(config or {}))
    chunks = -(-dim // min(tiles_used["BLOCK_D"], max(16, 1 << (dim - 1).bit_length())))
    return 2 * chunks + (2 if algorithm == "fused" else 3)


def config_label(config) -> str:
    if config is None:
        return "default"
    return "{BLOCK_N}x{BLOCK_M} k{BLOCK_K} d{BLOCK_D} w{num_warps} s{num_stages}".format(**config)


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['label']:<44} ERROR {row['error']}", flush=True)
        return
    spills = [k["spills"] for k in row["kernels"].values() if k["spills"] is not None]
    regs = [k["regs"] for k in row["kernels"].values() if k["regs"] is not None]
    err = row["rel_err"]
    print(f"{row['label']:<44} {row['ms']:8.3f} ms  fwd {row['fwd_ms']:7.3f}  eager {row['eager_ms']:7.3f}  "
          f"{row['gemm_passes']:2d} passes {row['tflops']:6.1f} TFLOP/s  "
          f"peak {row.get('peak_mb', float('nan')):6.1f} MB  regs {max(regs) if regs else '-':>3} "
          f"spills {max(spills) if spills else '-':>4}  err loss {err['loss']:.1e} dA {err['dA']:.1e} "
          f"dC {err['dC']:.1e}  (eager dA {row['eager_rel_err']['dA']:.1e})  first {row['first_call_s']:.1f}s",
          flush=True)


def summary(rows, skipped, elapsed) -> None:
    print(f"\nsweep: {len(rows)} configs in {elapsed:.1f} s; default algorithm now {DEFAULT_ALGORITHM!r}")
    for dtype in ("bfloat16", "float32"):
        timed = [r for r in rows if r["dtype"] == dtype and "ms" in r]
        for algorithm in ("fused", "split"):
            best = min((r for r in timed if r["algorithm"] == algorithm), key=lambda r: r["ms"], default=None)
            if best:
                print(f"  best {algorithm:<5} {dtype:<8}: {best['ms']:.3f} ms  {best['label']}  "
                      f"(eager {best['eager_ms']:.3f} ms)")
    if skipped:
        print("  not started (budget): " + "; ".join(skipped))


def write_json(args, device, shape, rows, skipped, elapsed) -> None:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-dryrun"
    tag = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    default_dir = Path(tempfile.gettempdir()) if args.dry_run else ROOT / "benchmarks" / "results"
    results = Path(os.environ.get("RETAILSIM_RESULTS_DIR", default_dir))
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"contrastive-sweep-{tag}-{datetime.date.today().isoformat()}.json"
    meta = dict(device=name, shape=shape, torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), commit=git_commit(), reps=args.reps, budget_s=args.budget,
                elapsed_s=elapsed, skipped=skipped, default_algorithm=DEFAULT_ALGORITHM,
                default_tiles=dict(fused=fused._CUDA_CONFIG, split=triton_split.CUDA_CONFIG))
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1, default=str))
    print(f"  written: {path}")


if __name__ == "__main__":
    sys.exit(main())
