"""Targets, occupancy and the estimate model of the kernel report. Every time here is an ESTIMATE.

Constants (vendor datasheets: NVIDIA A100 Tensor Core GPU datasheet, H100 Tensor Core GPU datasheet, SXM
parts; per-SM limits from the CUDA C++ Programming Guide's compute-capability table): dense tensor-core
peaks without sparsity; ``mufu_per_clk`` is the special-function unit's ex2 rate per SM per clock (16 on
sm_80 and sm_90); ``clock_ghz`` the boost clock.

Model, per kernel launch:
  floor    = max(bytes_min / bandwidth, flops_min / tensor-core peak (CUDA-core peak for work that is not a
             matrix product), exps / (SMs * mufu_per_clk * clock))
  issue    = ceil(grid / SMs) * warps_per_cta * instructions_per_cta / (4 * clock)
             (4 schedulers per SM issue one warp-instruction per clock; the busiest SM runs ceil(grid / SMs)
             CTAs, ctas_per_sm of them at a time)
  estimate = max(floor, issue)
Blind spots, said plainly: latency (a dependent chain of shuffles or a load whose latency no other warp
hides) is not modelled, so a kernel with few warps per SM can be far slower than the estimate; only the
hot loop's instructions are counted (code outside it is free); caches are ideal (each byte of the minimum
moves once); dual issue and tensor-core pipe occupancy are not modelled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Target:
    arch: str
    name: str
    sms: int
    clock_ghz: float
    bandwidth_tbs: float
    tc_bf16_tflops: float
    tc_tf32_tflops: float
    fp32_tflops: float
    mufu_per_clk: int = 16
    registers_per_sm: int = 65536
    smem_per_sm: int = 0
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32


TARGETS = {
    80: Target("sm_80", "A100 SXM4 80GB", 108, 1.41, 2.039, 312.0, 156.0, 19.5, smem_per_sm=167936),
    90: Target("sm_90", "H100 SXM5 80GB", 132, 1.98, 3.35, 989.0, 494.0, 67.0, smem_per_sm=233472),
}
# The H200 (SXM) is the H100's chip with HBM3e at 4.8 TB/s (NVIDIA H200 datasheet); its rates are the H100's.
H200 = Target("sm_90", "H200 SXM 141GB", 132, 1.98, 4.8, 989.0, 494.0, 67.0, smem_per_sm=233472)


def target_for_device(name: str) -> Target | None:
    """The datasheet target of a CUDA device, by the name ``torch.cuda.get_device_name`` gives; None if unknown."""
    if "H200" in name:
        return H200
    if "H100" in name and "PCIe" in name:  # its datasheet: 114 SMs, 2.0 TB/s, 756 / 378 / 51 TFLOP/s
        return replace(TARGETS[90], name="H100 PCIe 80GB", sms=114, bandwidth_tbs=2.0, tc_bf16_tflops=756.0,
                       tc_tf32_tflops=378.0, fp32_tflops=51.0)
    if "H100" in name:
        return TARGETS[90]
    if "A100" in name:
        return TARGETS[80]
    return None


def ctas_per_sm(target: Target, registers: int, num_warps: int, smem_bytes: int) -> int:
    """Resident CTAs per SM: registers (allocated per warp in units of 256), warps, shared memory (+1 KiB
    reserved per CTA), and the CTA limit."""
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_registers = (target.registers_per_sm // per_warp) // num_warps
    by_warps = target.max_warps_per_sm // num_warps
    by_smem = target.smem_per_sm // (smem_bytes + 1024) if smem_bytes else target.max_ctas_per_sm
    return max(0, min(by_registers, by_warps, by_smem, target.max_ctas_per_sm))


def floor_ms(target: Target, bytes_min: float, tc_flops: float, fp32_flops: float, exps: float,
             tc_peak: str = "bf16") -> float:
    peak = target.tc_bf16_tflops if tc_peak == "bf16" else target.tc_tf32_tflops
    terms = (bytes_min / (target.bandwidth_tbs * 1e12), tc_flops / (peak * 1e12),
             fp32_flops / (target.fp32_tflops * 1e12), exps / (target.sms * target.mufu_per_clk * target.clock_ghz * 1e9))
    return 1e3 * max(terms)


def issue_ms(target: Target, grid: int, ctas: int, num_warps: int, instructions_per_cta: float) -> float:
    """The busiest SM's warp-instructions over its 4 schedulers: it runs ceil(grid / SMs) CTAs in all (a last,
    partial wave holds only what is left, not ``ctas`` CTAs)."""
    per_sm = math.ceil(grid / target.sms) if ctas > 0 else grid
    return 1e3 * per_sm * num_warps * instructions_per_cta / (4 * target.clock_ghz * 1e9)
