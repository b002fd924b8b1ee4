"""selective_scan against the peers a user would pick instead (SPEC 7), forward and forward+backward, time and
peak memory. Peers: the step-by-step reference (our parity reference), mambapy's parallel scan (pure PyTorch),
and on CUDA accelerated-scan's Triton scan (over dim·N channels) and torch.compile of the reference. Rows:
``ours`` is what ``selective_scan`` dispatches to (C++ or PyTorch on CPU, Triton on CUDA); ``torch-path`` is
the PyTorch path forced, whose target is ≥ 1× the reference; ``triton`` runs only in the --quick CPU dry run
(through the interpreter, so its time means nothing there). CUDA rows of ours also record the achieved
floor from ``least_work`` (every row gets the same floor, through the harness).
Peers that are not installed are skipped with a line saying so.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness import Work, measure
from retailsim.ops import backend, selective_scan
from retailsim.ops.selective_scan.function import launchers
from retailsim.ops.selective_scan.reference import discretize_delta, selective_scan_ref

SPEC_CUDA_SHAPE = (16, 1536, 2048, 16)   # (batch, dim, L, N)
SPEC_CPU_SHAPE = (8, 256, 256, 16)
QUICK_SHAPE = (2, 8, 32, 4)
COMPILE_MAX_LENGTH = 256  # torch.compile unrolls the reference's Python loop: minutes to compile beyond this


def model_small_shape() -> tuple[int, int, int, int]:
    """The `small` preset's scan: (batch, d_inner = 2 d_model, max_history, d_state)."""
    try:
        from retailsim.model.config import WorldModelConfig  # issue 6; absent until the model lands

        config = WorldModelConfig.from_name("small")
        return (8, 2 * config.d_model, getattr(config, "max_history", 256), getattr(config, "d_state", 16))
    except (ImportError, AttributeError, KeyError, ValueError):
        return (8, 512, 256, 16)  # d_model 256, history 256, d_state 16; batch 8 keeps the CPU reference sane


def cases(device_type: str, quick: bool):
    if quick:
        return [("quick", QUICK_SHAPE, torch.float32)]
    small = model_small_shape()
    small_name = "small-b{}-d{}-L{}-N{}".format(*small)
    if device_type == "cuda":
        spec = "b{}-d{}-L{}-N{}".format(*SPEC_CUDA_SHAPE)
        return [(spec, SPEC_CUDA_SHAPE, torch.bfloat16), (spec, SPEC_CUDA_SHAPE, torch.float32),
                (small_name, small, torch.bfloat16)]
    return [("b{}-d{}-L{}-N{}".format(*SPEC_CPU_SHAPE), SPEC_CPU_SHAPE, torch.float32),
            (small_name, small, torch.float32)]


def problem(shape, dtype, device, seed=0):
    """Mamba-block inputs: softplus Δ with bias, D skip, z gate; A, D, bias in float32."""
    batch, dim, length, dstate = shape
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0, dt=dtype):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dt)

    return dict(
        u=randn(batch, dim, length), delta=randn(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, dstate, generator=gen) + 0.5).to(device), B=randn(batch, dstate, length),
        C=randn(batch, dstate, length), D=randn(dim, dt=torch.float32), z=randn(batch, dim, length),
        delta_bias=randn(dim, scale=0.3, dt=torch.float32), delta_softplus=True,
    )


def mambapy_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mambapy's selective scan: bulk (batch, L, dim, N) tensors and its Blelloch parallel scan."""
    from mambapy.pscan import pscan

    dtype = u.dtype
    delta = discretize_delta(delta.float(), delta_bias, delta_softplus).transpose(1, 2)   # (batch, L, dim)
    x = u.float().transpose(1, 2)
    decay = torch.exp(delta.unsqueeze(-1) * A)                                              # (batch, L, dim, N)
    drive = (delta * x).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(2)
    states = pscan(decay, drive)
    y = (states @ C.float().transpose(1, 2).unsqueeze(-1)).squeeze(-1) + D * x              # (batch, L, dim)
    return (y * F.silu(z.float().transpose(1, 2))).transpose(1, 2).to(dtype)


def accelerated_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """accelerated-scan's Triton first-order scan over dim·N channels (it has no selective-scan op)."""
    from accelerated_scan.scalar import scan

    batch, dim, length = u.shape
    dstate = A.shape[1]
    delta = discretize_delta(delta.float(), delta_bias, delta_softplus)                     # (batch, dim, L)
    gates = torch.exp(delta[:, :, None, :] * A[None, :, :, None])                           # (batch, dim, N, L)
    tokens = (delta * u.float())[:, :, None, :] * B.float()[:, None]
    states = scan(gates.reshape(batch, dim * dstate, length).contiguous(),
                  tokens.reshape(batch, dim * dstate, length).contiguous()).view(batch, dim, dstate, length)
    y = torch.einsum("bdnl,bnl->bdl", states, C.float()) + D[:, None] * u.float()
    return (y * F.silu(z.float())).to(u.dtype)


def peer(impl: str, device: torch.device, length: int, passes: str):
    """The function to time for ``impl``, or a reason to skip."""
    if impl in ("ours", "torch-path"):
        return selective_scan
    if impl == "triton":
        if device.type == "cuda":
            pytest.skip("on CUDA the triton row is the ours row")
        if not backend.triton_runs_on(device):
            pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (the --quick dry run); it is not a CPU peer")
        return selective_scan
    if impl == "reference":
        return selective_scan_ref
    if impl == "mambapy":
        pytest.importorskip("mambapy", reason="mambapy is not installed (pip install mambapy)")
        return mambapy_scan
    if impl == "accelerated-scan":
        if device.type != "cuda":
            pytest.skip("accelerated-scan is a CUDA (Triton) peer")
        pytest.importorskip("accelerated_scan", reason="accelerated-scan is not installed")
        return accelerated_scan
    if impl == "torch.compile":
        if device.type != "cuda":
            pytest.skip("torch.compile of the reference is a CUDA peer here (CPU compile of the loop: minutes)")
        if passes != "fwd":
            pytest.skip("torch.compile of the reference: forward only (compiling the unrolled backward would "
                        "take gpu_check past its 8 minutes)")
        if length > COMPILE_MAX_LENGTH:
            pytest.skip(f"torch.compile unrolls the reference's {length}-step loop; compared at L <= "
                        f"{COMPILE_MAX_LENGTH} (the small-shape row)")
        return torch.compile(selective_scan_ref)
    raise AssertionError(impl)


def least_work(shape, dtype, passes: str) -> Work:
    """What a perfect kernel does: u, Δ, z read and out written (plus B, C) forward; backward also reads
    them and dout and writes du, dΔ, dz, dB, dC (A, D, bias and the state are negligible); one exp(Δ A) per
    (batch, channel, step, state) each way."""
    batch, dim, length, dstate = shape
    size = torch.tensor([], dtype=dtype).element_size()
    seq, bc = batch * dim * length * size, batch * dstate * length * size
    forward = 4 * seq + 2 * bc
    steps = batch * dim * length * dstate
    if passes == "fwd":
        return Work(bytes=forward, fp32_flops=4 * steps, exps=steps)
    return Work(bytes=forward + 7 * seq + 4 * bc, fp32_flops=14 * steps, exps=2 * steps)


def repetitions(impl: str, device: torch.device, quick: bool) -> dict:
    """The step-by-step peers take seconds per call at the SPEC shape: fewer repetitions keep gpu_check
    inside its 8 minutes; ours gets the harness's defaults on CUDA."""
    if device.type == "cpu":
        return dict(rounds=3)
    if impl in ("ours", "accelerated-scan") or quick:
        return dict(rounds=5)
    return dict(rounds=1, cuda_reps=3)


IMPLS = ("ours", "triton", "torch-path", "reference", "mambapy", "accelerated-scan", "torch.compile")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", range(3), ids=lambda i: f"case{i}")
def test_selective_scan(benchmark, device, quick, impl, passes, case):
    all_cases = cases(device.type, quick)
    if case >= len(all_cases):
        pytest.skip("no such case on this device")
    name, shape, dtype = all_cases[case]
    if impl == "torch-path" and device.type == "cuda" and shape == SPEC_CUDA_SHAPE:
        pytest.skip("the PyTorch path is the MPS/CPU fallback: on CUDA it is timed at the small shape only")
    fn = peer(impl, device, shape[2], passes)
    if impl in ("torch-path", "triton"):
        backend.set_backend("torch" if impl == "torch-path" else "triton")
    inputs = problem(shape, dtype, device)
    tensors = [k for k in ("u", "delta", "B", "C", "z") if passes == "fwd+bwd"]
    for key in tensors:
        inputs[key].requires_grad_(True)
    dout = torch.randn(shape[:3], device=device).to(dtype)

    def call():
        out = fn(**inputs)
        if passes == "fwd+bwd":
            return torch.autograd.grad(out, [inputs[k] for k in tensors], dout)
        return out

    label = impl
    if impl == "ours":
        label = f"ours ({launchers(device)[0]})"
    try:
        with torch.no_grad() if passes == "fwd" else torch.enable_grad():
            measure(benchmark, call, device=device, group=f"selective_scan {name} {str(dtype)[6:]} {passes}",
                    impl=label, ours=impl == "ours", work=least_work(shape, dtype, passes),
                    **repetitions(impl, device, quick))
    finally:
        backend.set_backend(None)
