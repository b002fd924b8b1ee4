"""Run as a script (without TRITON_INTERPRET): compiles two deliberately bad kernels and one good one
offline for sm_90 and prints, as JSON, what the kernel report's checks say of each. The test of the checks
reads it: a check that passes these would pass anything."""
import json
import sys

import torch
import triton
import triton.language as tl

from retailsim.ops.report import check
from retailsim.ops.report.compile import compile_launch, dots_needing_mma, hot_loop, instruction_counts


@triton.jit
def _spilling_kernel(p_x, p_out, n, BLOCK: tl.constexpr):
    # A (BLOCK, BLOCK) fp32 tile per thread group of one warp, kept live across a data-dependent loop.
    o = tl.arange(0, BLOCK)
    b_x = tl.load(p_x + o[:, None] * BLOCK + o[None, :])
    b_acc = b_x
    for i in range(n):
        b_acc = b_acc * b_x + tl.sqrt(tl.abs(b_acc) + i)
        b_x = tl.trans(b_acc) * 0.5 + b_x
    tl.store(p_out + o[:, None] * BLOCK + o[None, :], b_acc + b_x)


@triton.jit
def _dot_kernel(p_a, p_b, p_out, n, UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    # UPCAST: bf16 operands widened to fp32 and multiplied in IEEE fp32 -- a bf16 dot off the tensor cores.
    o = tl.arange(0, BLOCK)
    b_acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    for i in range(n):
        b_a = tl.load(p_a + i * BLOCK * BLOCK + o[:, None] * BLOCK + o[None, :])
        b_b = tl.load(p_b + i * BLOCK * BLOCK + o[:, None] * BLOCK + o[None, :])
        if UPCAST:
            b_acc += tl.dot(b_a.to(tl.float32), b_b.to(tl.float32), input_precision="ieee")
        else:
            b_acc += tl.dot(b_a, b_b)
    tl.store(p_out + o[:, None] * BLOCK + o[None, :], b_acc)


def _record(name, compiled):
    loop = hot_loop(compiled.sass)
    return {"kernel": name, "arch": "sm_90", "spill_bytes": compiled.spill_bytes, "registers": compiled.registers,
            "dots_needing_mma": dots_needing_mma(compiled.ttir),
            "mma_instructions": instruction_counts(compiled.sass)["mma"],
            "shfl_per_loop_iter": loop["shfl"] if loop else 0}


def main():
    x = torch.empty(128 * 128)
    a = torch.empty(64 * 64, dtype=torch.bfloat16)
    kernels = {
        "spilling": compile_launch(_spilling_kernel, dict(p_x=x, p_out=x, n=7, BLOCK=128), {"num_warps": 1}, 90),
        "dot_upcast": compile_launch(_dot_kernel, dict(p_a=a, p_b=a, p_out=x, n=3, UPCAST=True, BLOCK=64),
                                     {"num_warps": 4}, 90),
        "dot_bf16": compile_launch(_dot_kernel, dict(p_a=a, p_b=a, p_out=x, n=3, UPCAST=False, BLOCK=64),
                                   {"num_warps": 4}, 90),
    }
    out = {}
    for name, compiled in kernels.items():
        record = _record(name, compiled)
        failures, excused = check([record], exceptions={})
        out[name] = {"record": record, "failures": failures}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
