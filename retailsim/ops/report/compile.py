"""Compile a recorded Triton launch offline for a CUDA arch and read its cubin and SASS.

``triton.compile`` of the kernel's AST with the signature and specialisation the runtime would derive from
the launch's arguments (Triton's own binder, given stand-ins with the tensors' dtypes and 16-byte-aligned
addresses), for ``GPUTarget("cuda", arch, 32)``; ``cuobjdump`` from the Triton wheel gives the resource
usage and the SASS. Needs no GPU and no CUDA driver.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

import torch

ALIGNED_ADDRESS = 1 << 20  # what the stand-in pointers report: divisible by 16 like any torch allocation


class _Pointer:
    """A tensor as Triton's specialiser sees it: a dtype and an address."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def data_ptr(self) -> int:
        return ALIGNED_ADDRESS


def _bin_dir() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def tool_versions() -> dict:
    import triton

    ptxas = subprocess.run([os.path.join(_bin_dir(), "ptxas"), "--version"], capture_output=True, text=True)
    release = re.search(r"release ([\d.]+), (V[\d.]+)", ptxas.stdout)
    return {"triton": triton.__version__, "ptxas": " ".join(release.groups()) if release else ptxas.stdout.strip()}


@functools.lru_cache(maxsize=None)
def _backend(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    return make_backend(GPUTarget("cuda", arch, 32))


@dataclass
class CompiledKernel:
    name: str
    arch: int
    registers: int
    stack_bytes: int        # local memory per thread: spills (and any local arrays)
    spill_stores: int       # bytes, from ptxas' report
    spill_loads: int
    smem_bytes: int         # static + dynamic shared memory per CTA
    num_warps: int
    sass: list              # [(address, opcode, text)]
    ttir: str

    @property
    def spill_bytes(self) -> int:
        return max(self.stack_bytes, self.spill_stores, self.spill_loads)


def _signature(kernel, args: dict, backend):
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    stand_ins = {k: (_Pointer(v.dtype) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    bound, specialization, _ = binder(**stand_ins)
    return bound, specialization


def compile_launch(kernel, args: dict, options: dict, arch: int) -> CompiledKernel:
    """Offline compile of ``kernel`` launched with ``args`` (name -> value) and ``options`` for sm_{arch}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import find_paths_if, get_iterable_path

    backend = _backend(arch)
    bound, specialization = _signature(kernel, args, backend)
    names = [p.name for p in kernel.params]
    sigvals = [s[0] for s in specialization]
    signature = dict(zip(names, sigvals))
    paths = find_paths_if(sigvals, lambda _, v: v == "constexpr")
    constexprs = {path: get_iterable_path(list(bound.values()), path) for path in paths}
    attrvals = ["" if s[0] == "constexpr" else s[1] for s in specialization]
    attr_paths = find_paths_if(attrvals, lambda _, v: isinstance(v, str))
    attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path)) for path in attr_paths}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(options))
    return _read_cubin(kernel.fn.__name__, arch, compiled.asm["cubin"], compiled.asm["ptx"],
                       compiled.metadata.num_warps, compiled.metadata.shared, compiled.asm["ttir"])


def _read_cubin(name, arch, cubin: bytes, ptx: str, num_warps: int, shared: int, ttir: str) -> CompiledKernel:
    bin_dir = _bin_dir()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "-sass", path],
                              capture_output=True, text=True, check=True).stdout
        ptx_path = os.path.join(folder, "kernel.ptx")
        with open(ptx_path, "w") as handle:
            handle.write(ptx)
        arch_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        verbose = subprocess.run([os.path.join(bin_dir, "ptxas"), "-v", f"--gpu-name={arch_name}", ptx_path,
                                  "-o", os.path.join(folder, "again.cubin")], capture_output=True, text=True)
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    static_smem = int(re.search(r"SHARED:(\d+)", usage).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", verbose.stderr + verbose.stdout)
    stores, loads = (int(spills.group(1)), int(spills.group(2))) if spills else (0, 0)
    return CompiledKernel(name, arch, registers, stack, stores, loads, max(static_smem, shared), num_warps,
                          parse_sass(sass), ttir)


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def parse_sass(text: str) -> list:
    """[(address, opcode, operands)] of every instruction in cuobjdump's SASS listing."""
    return [(int(m.group(1), 16), m.group(3), m.group(4)) for m in _LINE.finditer(text)]


def loops(sass: list) -> list:
    """Loops as (start address, end address) from backward branches, innermost ones first (a branch to itself,
    the trap ptxas puts after the last EXIT, is not one)."""
    found = set()
    for address, opcode, operands in sass:
        if opcode.startswith("BRA"):
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                found.add((int(target.group(1), 16), address))
    return sorted(found, key=lambda span: span[1] - span[0])


CLASSES = {
    "mma": ("HMMA", "HGMMA", "IMMA", "DMMA", "WGMMA"),
    "shfl": ("SHFL",),
    "bar": ("BAR",),
    "mufu": ("MUFU",),
    "local": ("LDL", "STL"),
    "global_load": ("LDG", "LDGSTS", "UTMALDG"),
}


def instruction_counts(sass: list, span: tuple | None = None) -> dict:
    """Instructions (all, and by class) in ``span`` (start, end addresses, inclusive) or the whole kernel."""
    ops = [op for address, op, _ in sass if span is None or span[0] <= address <= span[1]]
    ops = [op for op in ops if op != "NOP"]
    counts = Counter()
    for op in ops:
        for name, prefixes in CLASSES.items():
            if op.split(".")[0] in prefixes:
                counts[name] += 1
    return {"instructions": len(ops), **{name: counts[name] for name in CLASSES}}


def hot_loop(sass: list, counts: tuple = ()) -> dict:
    """The loop the kernel spends its time in: the innermost loop with the most instructions (a loop that
    holds another loop is never innermost), or, given ``counts`` (as ``instructions_per_program`` takes
    them), the one that executes the most; counts per iteration. ``None`` for straight-line code."""
    spans = loops(sass)
    innermost = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    if not innermost:
        return None
    runs = dict(zip(sorted(spans), (count for _, count in counts))) if len(counts) == len(spans) else {}
    best = max(innermost, key=lambda s: instruction_counts(sass, s)["instructions"] * runs.get(s, 1))
    return {"span": [best[0], best[1]], "loops": len(spans), **instruction_counts(sass, best)}


def dots_needing_mma(ttir: str) -> int:
    """``tl.dot``s that belong on tensor cores: bf16/fp16 operands (also when widened to fp32 first, the
    way a tensor-core-less bug looks) or a TF32 precision. IEEE fp32 and fp64 dots may use FMA."""
    defs = dict(re.findall(r"(%[\w#]+) = (.*)", ttir))
    needing = 0
    for line in ttir.splitlines():
        if " tt.dot " not in line:
            continue
        operands = re.search(r"tt\.dot (%[\w#]+), (%[\w#]+)", line).groups()
        types = re.search(r": (tensor<[^>]+>) \* (tensor<[^>]+>)", line)
        half = types and any(t in types.group(1) for t in ("xbf16>", "xf16>"))
        precision = re.search(r"inputPrecision = (\w+)", line)
        tf32 = precision and precision.group(1).startswith("tf32")
        widened = any("arith.extf" in defs.get(o, "") and re.search(r"x(bf16|f16)>", defs.get(o, "")) for o in operands)
        fp32_default = types and "xf32>" in types.group(1) and precision is None
        needing += bool(half or tf32 or widened or fp32_default)
    return needing


def loop_nest(sass: list) -> list:
    """Every loop with its depth (1 = outermost) and its own instructions (nested loops' left out)."""
    spans = loops(sass)
    nest = []
    for span in spans:
        depth = 1 + sum(1 for o in spans if o != span and o[0] <= span[0] and span[1] <= o[1])
        children = [o for o in spans if o != span and span[0] <= o[0] and o[1] <= span[1]]
        direct = [c for c in children if not any(c != d and d[0] <= c[0] and c[1] <= d[1] for d in children)]
        own = instruction_counts(sass, span)["instructions"] - sum(instruction_counts(sass, c)["instructions"]
                                                                   for c in direct)
        nest.append({"span": list(span), "depth": depth, "own_instructions": own})
    return sorted(nest, key=lambda loop: loop["span"][0])


def instructions_per_program(sass: list, trips: list, counts: tuple = ()) -> float:
    """Warp-instructions one program issues: straight-line code once, each loop's own instructions times
    the product of the declared trip counts down to its depth (``trips`` outer to inner), or, given
    ``counts`` ((depth, executions) per loop in address order, for loops side by side), times its own
    executions. A loop deeper than ``trips`` declares, or ``counts`` whose depths are not the SASS's loops',
    is a ValueError: the cost model no longer describes the kernel."""
    nest = loop_nest(sass)
    if counts and [depth for depth, _ in counts] != [loop["depth"] for loop in nest]:
        raise ValueError(f"the cost model declares loops at depths {[d for d, _ in counts]}, the SASS has them at "
                         f"{[loop['depth'] for loop in nest]}")
    total = instruction_counts(sass)["instructions"] - sum(l["own_instructions"] for l in nest)
    for i, loop in enumerate(nest):
        if counts:
            factor = counts[i][1]
        else:
            if loop["depth"] > len(trips):
                raise ValueError(f"a loop at depth {loop['depth']}, the cost model declares {len(trips)} levels")
            factor = 1
            for level in range(loop["depth"]):
                factor *= trips[level]
        total += loop["own_instructions"] * factor
    return total
