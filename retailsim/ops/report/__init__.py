"""The offline kernel report: every Triton kernel of ``retailsim.ops`` compiled for sm_80 and sm_90 on a
machine without a GPU, with its resources, the SASS of its hot loop, launches per call and an ESTIMATE
against the hardware floor (``hardware.py`` states the model). ``benchmarks/kernel_report.py`` writes it;
the test suite runs ``check`` on it.
"""
from __future__ import annotations

import warnings

from retailsim.ops.report import costs, hardware
from retailsim.ops.report.capture import capture_call
from retailsim.ops.report.compile import (compile_launch, dots_needing_mma, hot_loop, instruction_counts,
                                          instructions_per_program, loop_nest)

ARCHS = (80, 90)

# Named exceptions to the checks for the kernels as they are today; each is lifted by the issue named. A key
# (name, check) excuses every dtype, (name, check, dtype) only that one.
EXCEPTIONS = {
    ("_selective_scan_bwd_kernel", "spills"): "register spill of the scan backward (issue 15: scan redesign)",
    ("_contrastive_fwd_kernel", "spills", "float32"): "TF32x3 tiles at 255 registers (issue 16: contrastive redesign)",
    ("_contrastive_bwd_candidate_kernel", "spills", "float32"): "TF32x3 tiles at 255 registers (issue 16)",
}


def _kernel_record(case, launch, compiled, target) -> dict:
    grid = launch.grid
    cost = costs.cost(launch.name, launch.args, grid)
    loop = hot_loop(compiled.sass, cost.loop_counts if cost is not None else ())
    counts = instruction_counts(compiled.sass)
    programs = grid[0] * grid[1] * grid[2]
    ctas = hardware.ctas_per_sm(target, compiled.registers, compiled.num_warps, compiled.smem_bytes)
    record = {
        "op": case.op, "kernel": launch.name, "arch": target.arch, "shape": list(case.shape),
        "dtype": str(case.dtype).removeprefix("torch."), "grid": list(grid), "programs": programs,
        "sms": target.sms, "num_warps": compiled.num_warps,
        "config": {k: v for k, v in launch.args.items() if k.isupper() and isinstance(v, (int, bool, str))},
        "registers": compiled.registers, "spill_bytes": compiled.spill_bytes, "smem_bytes": compiled.smem_bytes,
        "ctas_per_sm": ctas, "waves": round(programs / max(1, target.sms * max(ctas, 1)), 2),
        "kernel_instructions": counts,
        "hot_loop": loop, "loop_nest": loop_nest(compiled.sass), "mma_instructions": counts["mma"],
        "dots_needing_mma": dots_needing_mma(compiled.ttir),
        "shfl_per_loop_iter": loop["shfl"] if loop else 0,
        "estimate_ms": None, "floor_ms": None, "estimate_over_floor": None,
    }
    if cost is not None:
        floor = hardware.floor_ms(target, cost.bytes_min, cost.tc_flops_min, cost.fp32_flops, cost.exps,
                                  cost.tc_peak)
        executed_tc = hardware.floor_ms(target, 0, cost.tc_flops_executed, 0, 0, cost.tc_peak)
        try:
            per_cta = instructions_per_program(compiled.sass, list(cost.loop_trips), cost.loop_counts)
        except ValueError as error:   # reported as a check failure, the estimate left out
            record["cost_model_error"] = str(error)
            return record
        issue = hardware.issue_ms(target, programs, ctas, compiled.num_warps, per_cta)
        estimate = max(floor, executed_tc, issue)
        record.update(
            estimate_ms=_ms(estimate), floor_ms=_ms(floor),
            estimate_over_floor=round(estimate / floor, 2) if floor else None,
            issue_ms=_ms(issue), tc_executed_ms=_ms(executed_tc),
            flops_executed_over_min=round(cost.tc_flops_executed / cost.tc_flops_min, 2)
            if cost.tc_flops_min else None,
            bytes_min=cost.bytes_min, exps=cost.exps, loop_trips=list(cost.loop_trips),
            loop_counts=list(cost.loop_counts),
            instructions_per_program=per_cta,
        )
    return record


def _ms(value: float) -> float:
    """Milliseconds to four significant digits (four decimals would round a one-program kernel's floor to 0)."""
    return float(f"{value:.4g}")


def build(cases, archs=ARCHS, log=print) -> list:
    """Records for every (case, arch): one per Triton launch (kernel records) and one per op call."""
    records, compiled_cache = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in archs:
            target = hardware.TARGETS[arch]
            for case in cases:
                capture = capture_call(case.make_inputs, case.call, target.sms,
                                       (int(target.arch[3]), int(target.arch[4:])))
                estimates, seen = [], {}
                config = case.config_for(target.arch)
                config_mismatches = sorted(set(_mismatches(capture.triton, config)))
                for launch in capture.triton:
                    key = (launch.name, arch, repr(sorted((k, _key(v)) for k, v in launch.args.items())),
                           repr(sorted(launch.options.items())))
                    if key not in compiled_cache:
                        log(f"compile {launch.name} for {target.arch} ({case.label})")
                        compiled_cache[key] = compile_launch(launch.kernel, launch.args, launch.options, arch)
                    same = (key, tuple(launch.grid))  # e.g. one focal launch per row chunk: one record, counted
                    if same in seen:
                        seen[same]["launches"] += 1
                        estimates.append(seen[same]["estimate_ms"])
                        continue
                    record = _kernel_record(case, launch, compiled_cache[key], target)
                    record["launches"] = 1
                    seen[same] = record
                    records.append(record)
                    estimates.append(record["estimate_ms"])
                records.append({
                    "op": case.op, "arch": target.arch, "shape": list(case.shape),
                    "dtype": str(case.dtype).removeprefix("torch."),
                    "launches_per_fwd_bwd": capture.launches, "launch_budget": case.launch_budget,
                    "triton_launches": len(capture.triton), "aten_launches": dict(sorted(capture.aten.items())),
                    "host_syncs": sum(capture.host_syncs.values()), "host_sync_ops": capture.host_syncs,
                    "triton_estimate_ms": round(sum(e for e in estimates if e), 4) if estimates else None,
                    "config": _jsonable(config),
                    "config_mismatches": config_mismatches,
                })
    return records


def _mismatches(launches, config: dict):
    """One line per launch argument, option or grid that differs from what ``config_for`` says."""
    for launch in launches:
        expected = _config_of(config, launch.name)
        for name, used in {**launch.args, **launch.options}.items():
            if name in expected and name != "grid" and used != expected[name]:
                yield f"{launch.name}: {name}={used} but config_for says {expected[name]}"
        if "grid" in expected and tuple(launch.grid) != _grid3(expected["grid"]):
            yield f"{launch.name}: grid={tuple(launch.grid)} but config_for says {tuple(expected['grid'])}"


def _config_of(config: dict, kernel: str) -> dict:
    """What ``config_for`` says one kernel launches with: its shared entries, then the kernel's own (an entry
    keyed by the kernel's name, where kernels of one op launch different tiles)."""
    return {**{k: v for k, v in config.items() if not isinstance(v, dict)}, **config.get(kernel, {})}


def _grid3(grid) -> tuple:
    """A launch grid as the three dimensions the capture records."""
    return tuple(grid) + (1,) * (3 - len(grid))


def _jsonable(config: dict) -> dict:
    return {k: _jsonable(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
            for k, v in config.items()}


def _key(value):
    """What of an argument reaches the compiled code: a tensor's dtype, otherwise the value itself."""
    import torch

    return ("tensor", str(value.dtype)) if isinstance(value, torch.Tensor) else value


def check(records, exceptions=EXCEPTIONS) -> tuple[list, list]:
    """(failures, excused): one line each naming the kernel or op, the arch and what broke."""
    failures, excused = [], []

    def judge(name, arch, what, message, dtype=None):
        line = f"{name} on {arch}: {message}"
        key = next((k for k in ((name, what, dtype), (name, what)) if k in exceptions), None)
        (excused if key else failures).append(line + (f" [excused: {exceptions[key]}]" if key else ""))

    for record in records:
        if "kernel" in record:
            if record["spill_bytes"]:
                judge(record["kernel"], record["arch"], "spills",
                      f"spills {record['spill_bytes']} bytes ({record['registers']} registers)", record.get("dtype"))
            if record.get("cost_model_error"):
                judge(record["kernel"], record["arch"], "cost_model",
                      f"no estimate: {record['cost_model_error']}")
            if record["dots_needing_mma"] and not record["mma_instructions"]:
                judge(record["kernel"], record["arch"], "mma",
                      f"{record['dots_needing_mma']} tl.dot(s) of bf16/fp16/TF32 compiled without a tensor-core MMA")
        else:
            if record["host_syncs"]:
                judge(record["op"], record["arch"], "host_syncs",
                      f"{record['host_syncs']} host-synchronising op(s) {record['host_sync_ops']} per fwd+bwd")
            for mismatch in record.get("config_mismatches", []):
                judge(record["op"], record["arch"], "config", f"launched other tiles than config_for: {mismatch}")
            if record["launches_per_fwd_bwd"] > record["launch_budget"]:
                judge(record["op"], record["arch"], "launches",
                      f"{record['launches_per_fwd_bwd']} launches per fwd+bwd, budget {record['launch_budget']}")
    return sorted(set(failures)), sorted(set(excused))
