"""Registers, spills and shared memory of the contrastive_loss kernels on sm_90, compiled here, without a GPU.

Triton compiles each kernel ahead of time for an H100 target (GPUTarget("cuda", 90, 32)) with the arguments
the launchers pass at 4096 x 4096 x 512 (pointers and D, strides divisible by 16, as the JIT specialises them;
N, M, blocks_per_split not specialised), and the cuobjdump shipped with Triton reads the cubin's resource
usage: REG (registers a thread), STACK (bytes of local memory a thread: spills, 0 is none) and the shared
memory Triton allocated. It costs no GPU time, so the tiles worth timing can be picked before a GPU run. It
is the installed Triton's code generation: the GPU machine's Triton (3.6) may allocate differently, which the
sweep's regs/spills columns check.

    python benchmarks/sweeps/contrastive_registers.py                        # both algorithms' defaults
    python benchmarks/sweeps/contrastive_registers.py --dtype bf16 64,64,64,256,8,3 128,64,64,128,8,3
    (tiles: BLOCK_N,BLOCK_M,BLOCK_K,BLOCK_D,num_warps,num_stages; ~10 s each on 2 CPU cores)
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's current default, without its warning
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from retailsim.ops.contrastive_loss import triton as fused  # noqa: E402
from retailsim.ops.contrastive_loss import triton_split  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
ID_POINTERS = ("positive_ptr", "anchor_group_ptr", "candidate_group_ptr", "candidate_label_ptr",
               "positive_label_ptr")
SPECIALISED_INTS = ("D", "stride_a", "stride_c")  # multiples of 16 at D = 512: the JIT marks them divisible
# (name, kernel, extra constexprs): the fused forward twice, with and without its O accumulator.
KERNELS = (
    ("stats", fused._contrastive_fwd_kernel, dict(WANT_WEIGHTED=False)),
    ("fused-fwd", fused._contrastive_fwd_kernel, dict(WANT_WEIGHTED=True)),
    ("anchor", triton_split._contrastive_anchor_kernel, {}),
    ("candidate", fused._contrastive_bwd_candidate_kernel, {}),
)


def signature(kernel, operand: str) -> tuple[dict, dict]:
    """Triton argument types and the divisibility attributes the JIT would give them."""
    types, attrs = {}, {}
    for position, name in enumerate(kernel.arg_names):
        if name in ("a_ptr", "c_ptr"):
            types[name] = "*" + operand
        elif name in ID_POINTERS:
            types[name] = "*i64"
        elif name.endswith("_ptr"):
            types[name] = "*fp32"
        elif name == "scale":
            types[name] = "fp32"
        elif name in ("N", "M", "blocks_per_split") or name in SPECIALISED_INTS:
            types[name] = "i32"
        else:
            types[name] = "constexpr"
        if name.endswith("_ptr") or name in SPECIALISED_INTS:
            attrs[(position,)] = [["tt.divisibility", 16]]
    return types, attrs


def resources(kernel, operand: str, constexprs: dict, num_warps: int, num_stages: int) -> dict:
    types, attrs = signature(kernel, operand)
    compiled = triton.compile(ASTSource(kernel, types, constexprs=constexprs, attrs=attrs), target=TARGET,
                              options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    registers, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    return dict(regs=int(registers.group(1)) if registers else None, stack=int(stack.group(1)) if stack else None,
                smem_kb=compiled.metadata.shared // 1024)


def report(operand: str, tiles: tuple) -> str:
    block_n, block_m, block_k, block_d, num_warps, num_stages = tiles
    base = dict(PRECISION="tf32x3" if operand == "fp32" else "ieee", UPCAST=False, HAS_LABEL=True,
                BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=block_d)
    cells = []
    for name, kernel, extra in KERNELS:
        try:
            usage = resources(kernel, operand, dict(base, **extra), num_warps, num_stages)
            cells.append(f"{name} {usage['regs']} regs stack {usage['stack']} B smem {usage['smem_kb']} KB")
        except Exception as error:  # e.g. shared memory out of range: report, go on
            cells.append(f"{name} ERROR {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    return f"{operand} {block_n}x{block_m} k{block_k} d{block_d} w{num_warps} s{num_stages}: " + "; ".join(cells)


def tiles_of(config: dict) -> tuple:
    return tuple(config[key] for key in ("BLOCK_N", "BLOCK_M", "BLOCK_K", "BLOCK_D", "num_warps", "num_stages"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("tiles", nargs="*", help="BLOCK_N,BLOCK_M,BLOCK_K,BLOCK_D,num_warps,num_stages")
    args = parser.parse_args()
    if args.tiles:
        runs = [(args.dtype, tuple(int(x) for x in spec.split(","))) for spec in args.tiles]
    else:
        runs = [(operand, tiles_of(table[kind])) for operand, kind in (("bf16", "half"), ("fp32", "float32"))
                for table in (fused._CUDA_CONFIG, triton_split.CUDA_CONFIG)]
    for operand, tiles in runs:
        print(report(operand, tiles), flush=True)


if __name__ == "__main__":
    main()
