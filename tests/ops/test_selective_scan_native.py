"""The C++ CPU selective scan (kernels/selective_scan.cpp via retailsim/ops/selective_scan/native.py).

Parity of the launchers (forward: out, last state; backward: every gradient) against autograd through the
float64 step-by-step reference on fresh random inputs; float64 gradchecks of the hand-written C++ backward
through the public function; determinism across runs and thread counts; extreme Δ over long sequences;
malformed inputs. With the extension disabled (``RETAILSIM_NATIVE=0``, how ``make test`` reruns the
``native_parity`` tests) the parity tests run the same assertions on the PyTorch launchers, the fallback
that then serves CPU tensors; the tests about the C++ kernel itself skip.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retailsim import native as native_loader
from retailsim.ops import backend
from retailsim.ops.selective_scan import native, selective_scan, selective_scan_ref, torch_scan
from tests.ops.selective_scan_cases import OPTIONS
from tests.tolerances import (
    FP32_GRAD_REL_ERR,
    FP32_REL_ERR,
    SCAN_EXTREME_REL_ERR,
    assert_fp32_close,
    assert_low_precision_close,
    rel_err,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
SHAPES = {  # id -> (batch, dim, L, N, B groups, C groups); None: (batch, N, L)
    "L1-dim3-N1": (2, 3, 1, 1, None, None),
    "L63-dim5-N16": (2, 5, 63, 16, None, None),
    "L256-dim6-N16-groups3": (2, 6, 256, 16, 3, 3),
    "L130-dim12-N64-groupsB4": (1, 12, 130, 64, 4, None),
    "L70-dim6-N5-groupsC2": (2, 6, 70, 5, None, 2),
    "L4097-dim3-N16": (1, 3, 4097, 16, None, None),
    # the kernel's other compile-time state sizes (8, 32) and a large run-time one
    "L100-dim7-N8": (2, 7, 100, 8, None, None),
    "L65-dim3-N32-groups3": (2, 3, 65, 32, 3, 3),
    "L40-dim2-N256": (1, 2, 40, 256, None, None),
}

needs_cpp = pytest.mark.skipif(not native.available(), reason="retailsim._native with the selective_scan kernel "
                               "is not available (not built, or RETAILSIM_NATIVE=0)")


@pytest.fixture
def launchers():
    """The C++ launchers, or with the extension disabled the PyTorch ones that replace them on CPU."""
    return native if native.available() else torch_scan


def make_inputs(batch, dim, length, dstate, *, seed, groups_B=None, groups_C=None, options="all",
                dtype=torch.float32, delta=None):
    """Fresh random inputs; A, D, delta_bias float32 as in the model (float64 when dtype is float64)."""
    generator = torch.Generator().manual_seed(seed)
    has_D, has_z, has_bias, softplus = OPTIONS[options]
    param = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dt)

    def bc(groups):
        return randn(batch, dstate, length) if groups is None else randn(batch, groups, dstate, length)

    inputs = dict(
        u=randn(batch, dim, length),
        delta=randn(batch, dim, length, scale=0.5) if delta is None else delta.to(dtype),
        A=-(torch.rand(dim, dstate, generator=generator, dtype=torch.float64) + 0.5).to(param),
        B=bc(groups_B),
        C=bc(groups_C),
        D=randn(dim, dt=param) if has_D else None,
        z=randn(batch, dim, length) if has_z else None,
        delta_bias=randn(dim, scale=0.3, dt=param) if has_bias else None,
    )
    if not softplus and delta is None:
        inputs["delta"] = inputs["delta"].abs() + 0.01  # a positive step, as softplus would give
    return inputs, softplus


def reference64(inputs, softplus, dout):
    """(out, last_state, grads by name) of the float64 step-by-step reference, differentiated by autograd."""
    leaves = {n: None if t is None else t.detach().double().requires_grad_(True) for n, t in inputs.items()}
    out, last = selective_scan_ref(**leaves, delta_softplus=softplus, return_last_state=True)
    present = [n for n in NAMES if leaves[n] is not None]
    grads = torch.autograd.grad(out, [leaves[n] for n in present], dout.double())
    return out.detach(), last.detach(), dict(zip(present, grads))


def run_launchers(launchers, inputs, softplus, dout):
    out, last, checkpoints = launchers.forward(**inputs, delta_softplus=softplus)
    grads = launchers.backward(dout=dout, **inputs, delta_softplus=softplus, checkpoints=checkpoints)
    return out, last, (checkpoints,), {name: getattr(grads, f"d{name}") for name in NAMES}


def random_dout(inputs, seed):
    return torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(seed))


def assert_matches_reference(launchers, inputs, softplus, seed, out_bound=FP32_REL_ERR,
                             grad_bound=FP32_GRAD_REL_ERR):
    dout = random_dout(inputs, seed)
    out, last, _, grads = run_launchers(launchers, inputs, softplus, dout)
    out64, last64, grads64 = reference64(inputs, softplus, dout)
    assert out.dtype == torch.float32 and out.shape == inputs["u"].shape
    assert last.dtype == torch.float32 and last.shape == last64.shape
    assert_fp32_close(out, out64, "out", out_bound)
    assert_fp32_close(last, last64, "last_state", out_bound)
    for name in NAMES:
        if inputs[name] is None:
            assert grads[name] is None, f"d{name} must be None when {name} is None"
            continue
        assert grads[name].dtype == torch.float32 and grads[name].shape == inputs[name].shape, name
        assert_fp32_close(grads[name], grads64[name], f"d{name}", grad_bound)


@pytest.mark.native_parity
@pytest.mark.parametrize("options", list(OPTIONS))
def test_every_option_on_and_off(launchers, options):
    inputs, softplus = make_inputs(2, 5, 100, 16, seed=101, options=options)
    assert_matches_reference(launchers, inputs, softplus, seed=102)


@pytest.mark.native_parity
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes(launchers, shape):
    batch, dim, length, dstate, groups_B, groups_C = SHAPES[shape]
    inputs, softplus = make_inputs(batch, dim, length, dstate, seed=111, groups_B=groups_B, groups_C=groups_C)
    assert_matches_reference(launchers, inputs, softplus, seed=112)


@pytest.mark.native_parity
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_are_upcast(launchers, dtype):
    """bf16/fp16 inputs are computed in float32: no worse than 2x the same-dtype reference's error."""
    inputs, softplus = make_inputs(2, 5, 80, 16, seed=121, dtype=dtype)
    dout = random_dout(inputs, 122).to(dtype)
    out, last, _, grads = run_launchers(launchers, inputs, softplus, dout)
    same_dtype = selective_scan_ref(**inputs, delta_softplus=softplus)
    out64, last64, grads64 = reference64(inputs, softplus, dout)
    assert out.dtype == torch.float32
    assert_low_precision_close(out.to(dtype), same_dtype, out64, "out")
    assert_fp32_close(last, last64, "last_state")
    for name in grads64:  # exact functions of the (rounded) inputs, computed in float32
        assert_fp32_close(grads[name], grads64[name], f"d{name}", FP32_GRAD_REL_ERR)


@pytest.mark.native_parity
@pytest.mark.parametrize("regime,low,high", [("tiny", 1e-4, 1e-4), ("huge", 1e2, 1e3)])
def test_long_sequence_extreme_delta(launchers, regime, low, high):
    """L = 4096 with Δ = 1e-4 (the state integrates the whole sequence) or Δ in [1e2, 1e3] (every decay
    underflows to 0): finite everywhere and still within float32 reach of the float64 reference."""
    generator = torch.Generator().manual_seed(131)
    delta = low + (high - low) * torch.rand(1, 4, 4096, generator=generator, dtype=torch.float64)
    inputs, softplus = make_inputs(1, 4, 4096, 16, seed=132, options="D", delta=delta)
    dout = random_dout(inputs, 133)
    out, last, _, grads = run_launchers(launchers, inputs, softplus, dout)
    out64, last64, grads64 = reference64(inputs, softplus, dout)
    for name, tensor in [("out", out), ("last_state", last), *grads.items()]:
        assert tensor is None or torch.isfinite(tensor).all(), f"{name} has NaN/Inf ({regime} Δ)"
    assert_fp32_close(out, out64, "out", SCAN_EXTREME_REL_ERR)
    assert_fp32_close(last, last64, "last_state", SCAN_EXTREME_REL_ERR)
    for name in grads64:
        if name == "A" and regime == "huge":
            continue  # exp(Δ A) = 0 in float64 too: dA is ~1e-300, nothing to compare
        assert_fp32_close(grads[name], grads64[name], f"d{name}", SCAN_EXTREME_REL_ERR)


@pytest.mark.native_parity
def test_memory_of_saved_state_is_linear_in_L_over_chunk(launchers):
    inputs, softplus = make_inputs(2, 3, 200, 16, seed=141)
    _, _, saved, _ = run_launchers(launchers, inputs, softplus, random_dout(inputs, 142))
    saved_elements = sum(t.numel() for t in saved)
    assert saved_elements <= 2 * 3 * 16 * math.ceil(200 / 32), "saved states must be O(batch·dim·N·L/chunk)"


@needs_cpp
@pytest.mark.native_parity
@pytest.mark.parametrize("case", ["all-groups2-L70", "plain-L19", "z-softplus-groupsB2-L130"])
def test_float64_gradcheck_of_the_cpp_backward(case):
    """Finite differences through the public function on the C++ kernel's float64 build. L > 64 crosses
    the checkpoint boundary that the backward recomputes from."""
    options, length, groups_B, groups_C = {
        "all-groups2-L70": ("all", 70, 2, 2),
        "plain-L19": ("plain", 19, None, None),
        "z-softplus-groupsB2-L130": ("all", 130, 2, None),
    }[case]
    backend.set_backend("native")
    inputs, softplus = make_inputs(1, 2, length, 3, seed=151, groups_B=groups_B, groups_C=groups_C,
                                   options=options, dtype=torch.float64)
    names = [n for n in NAMES if inputs[n] is not None]
    leaves = [inputs[n].detach().clone().requires_grad_(True) for n in names]

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=softplus)

    assert torch.autograd.gradcheck(scan, leaves, fast_mode=length > 100)


@needs_cpp
@pytest.mark.native_parity
def test_public_function_runs_the_cpp_kernel_by_default_on_cpu():
    inputs, softplus = make_inputs(2, 5, 64, 16, seed=161, groups_B=5, groups_C=5)
    leaves = {n: None if t is None else t.clone().requires_grad_(True) for n, t in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus)
    dout = random_dout(inputs, 162)
    out.backward(dout)
    expected_out, _, _, expected = run_launchers(native, inputs, softplus, dout)
    assert backend.resolve("selective_scan", torch.device("cpu"), has_native=True) == "native"
    assert torch.equal(out.detach(), expected_out)
    for name in NAMES:
        assert torch.equal(leaves[name].grad, expected[name]), name


@needs_cpp
def test_second_derivatives_raise_instead_of_coming_back_as_zeros():
    inputs, softplus = make_inputs(1, 3, 12, 4, seed=151)
    u = inputs["u"].requires_grad_(True)
    out = selective_scan(**{**inputs, "u": u}, delta_softplus=softplus)
    dout = random_dout(inputs, 152).requires_grad_(True)
    (du,) = torch.autograd.grad(out, u, dout, create_graph=True)  # as gradgradcheck calls it
    with pytest.raises(RuntimeError, match="once_differentiable"):
        du.sum().backward()


@needs_cpp
def test_B_and_C_with_unrelated_group_counts():
    """B in 2 groups, C in 3 (mamba_ssm's reference allows it): each channel reads its own group of each.
    The PyTorch fallback does not support this case yet, so it is not a native_parity test."""
    inputs, softplus = make_inputs(2, 12, 130, 16, seed=221, groups_B=2, groups_C=3)
    assert_matches_reference(native, inputs, softplus, seed=222)


@needs_cpp
def test_run_twice_and_any_thread_count_give_identical_bits():
    # 1.2M state updates: large enough that the kernel really starts up to 7 threads (it caps small problems).
    inputs, softplus = make_inputs(3, 20, 300, 64, seed=171, groups_B=2, groups_C=5)
    dout = random_dout(inputs, 172)
    results = []
    try:
        for threads in (1, 1, 2, 3, 7):
            native.set_num_threads(threads)
            results.append(run_launchers(native, inputs, softplus, dout))
    finally:
        native.set_num_threads(None)
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        for name in NAMES:
            assert torch.equal(first[3][name], other[3][name]), name


def time_major(x: torch.Tensor) -> torch.Tensor:
    """The same (batch, dim, L) values stored as (batch, L, dim), as the model's matmul outputs are."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.native_parity
@pytest.mark.parametrize("shape", [(2, 33, 130, 8, None, None), (64, 40, 70, 4, 2, None)],
                         ids=["dim33-partial-block", "batch64-backward-spans-blocks"])
def test_time_major_inputs_match_the_reference(launchers, shape):
    """Time-major u, delta, z and dout (the model's layout) against the float64 reference: a last block of
    channels narrower than a tile (dim 33), and backward tasks that span several 16-channel blocks (batch 64:
    one task per batch row and B group)."""
    batch, dim, length, dstate, groups_B, groups_C = shape
    inputs, softplus = make_inputs(batch, dim, length, dstate, seed=141, groups_B=groups_B, groups_C=groups_C)
    dout = random_dout(inputs, 142)
    viewed = {name: time_major(t) if name in ("u", "delta", "z") else t for name, t in inputs.items()}
    out, last, _, grads = run_launchers(launchers, viewed, softplus, time_major(dout))
    out64, last64, grads64 = reference64(inputs, softplus, dout)
    assert_fp32_close(out, out64, "out")
    assert_fp32_close(last, last64, "last_state")
    for name in grads64:
        assert_fp32_close(grads[name], grads64[name], f"d{name}", FP32_GRAD_REL_ERR)


@needs_cpp
@pytest.mark.parametrize("layout", ["sliced", "time-major"])
def test_strided_views_are_read_in_place_and_give_the_same_bits(layout):
    """u and z as slices of one projection (channel-major or time-major), Δ, B, C, dout as transposed views:
    the same bits as contiguous copies, and each (batch, dim, L) output in the layout of its input."""
    dim = 20  # more than one forward block of channels
    inputs, softplus = make_inputs(3, dim, 70, 16, seed=181, groups_B=2, groups_C=4)
    dout = random_dout(inputs, 182)
    expected = run_launchers(native, inputs, softplus, dout)
    strided = dict(inputs)
    if layout == "sliced":
        uz = torch.cat([inputs["u"], inputs["z"]], dim=1)
        strided["u"], strided["z"] = uz[:, :dim], uz[:, dim:]
    else:
        uz = torch.cat([inputs["u"], inputs["z"]], dim=1).transpose(1, 2).contiguous()  # (batch, L, 2 dim)
        strided["u"], strided["z"] = uz[..., :dim].transpose(1, 2), uz[..., dim:].transpose(1, 2)
    strided["delta"] = time_major(inputs["delta"])
    strided["B"] = inputs["B"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    strided["C"] = torch.stack([inputs["C"], -inputs["C"]], dim=-1)[..., 0]   # stride 2 along L
    strided["A"] = inputs["A"].t().contiguous().t()
    got = run_launchers(native, strided, softplus, time_major(dout))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    for name in NAMES:
        assert torch.equal(expected[3][name], got[3][name]), name
    assert got[0].stride() == expected[0].stride() if layout == "sliced" else got[0].transpose(1, 2).is_contiguous()
    assert got[3]["delta"].transpose(1, 2).is_contiguous()
    assert got[3]["z"].transpose(1, 2).is_contiguous() == (layout == "time-major")
    assert got[3]["u"].transpose(1, 2).is_contiguous() == (layout == "time-major")


@needs_cpp
def test_bf16_inputs_give_the_bits_of_their_float32_upcast():
    inputs, softplus = make_inputs(2, 6, 40, 16, seed=183)
    low = {name: None if t is None else t.to(torch.bfloat16).float() for name, t in inputs.items()}
    dout = random_dout(inputs, 184).to(torch.bfloat16).float()
    expected = run_launchers(native, low, softplus, dout)
    half = {name: None if t is None else t.to(torch.bfloat16) for name, t in low.items()}
    got = run_launchers(native, half, softplus, dout.to(torch.bfloat16))
    assert torch.equal(expected[0], got[0].float())
    for name in NAMES:
        if expected[3][name] is not None:
            assert torch.equal(expected[3][name], got[3][name].float()), name


def _kernel_args(batch=2, dim=4, length=10, dstate=3):
    rng = np.random.default_rng(191)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return dict(u=f32(batch, dim, length), delta=np.abs(f32(batch, dim, length)), A=-np.abs(f32(dim, dstate)),
                B=f32(batch, dstate, length), C=f32(batch, dstate, length))


@needs_cpp
@pytest.mark.parametrize("change,error,message", [
    (dict(delta=np.zeros((2, 4, 9), np.float32)), ValueError, "delta must have shape (2, 4, 10)"),
    (dict(u=np.zeros((2, 4), np.float32)), ValueError, "u must have shape (batch, dim, L)"),
    (dict(A=np.zeros((5, 3), np.float32)), ValueError, "A must have shape (dim, N) = (4, N)"),
    (dict(B=np.zeros((2, 3, 3, 10), np.float32)), ValueError, "B has 3 groups, which does not divide dim = 4"),
    (dict(C=np.zeros((2, 4, 10), np.float32)), ValueError, "C must have shape (batch, N, L) = (2, 3, 10)"),
    (dict(D=np.zeros(3, np.float32)), ValueError, "D must have shape (4,)"),
    (dict(z=np.zeros((2, 4, 11), np.float32)), ValueError, "z must have shape (2, 4, 10)"),
    (dict(delta_bias=np.zeros((4, 1), np.float32)), ValueError, "delta_bias must have shape (4,)"),
    (dict(delta=np.zeros((2, 4, 10), np.float64)), TypeError, "delta must be float32"),
    (dict(u=np.zeros((2, 4, 10), np.int64)), TypeError, "u must be float32"),
    (dict(B=[[1.0]]), TypeError, "B must be a NumPy array, got list"),
    (dict(A=np.zeros((3, 4), np.float32).T), ValueError, "A must be C-contiguous"),
    (dict(u=np.zeros((2, 4, 10), np.float32)[:, :, ::-1]), ValueError, "u must have non-negative strides"),
    (dict(A=np.zeros((4, 0), np.float32)), ValueError, "A must have N >= 1"),
    (dict(num_threads=-1), ValueError, "num_threads must be >= 0"),
])
def test_kernel_rejects_malformed_buffers_with_a_clear_error(change, error, message):
    module = native_loader.load()
    args = {**_kernel_args(), **change}
    with pytest.raises(error) as raised:
        module.selective_scan_fwd(**args)
    assert message in str(raised.value)


@needs_cpp
def test_backward_rejects_checkpoints_of_another_problem():
    module = native_loader.load()
    args = _kernel_args(length=130)
    out, _, checkpoints = module.selective_scan_fwd(**args)
    assert checkpoints.shape == (2, 4, 2, 3)  # ceil(130 / 64) - 1 chunk ends
    with pytest.raises(ValueError, match="checkpoints must have shape"):
        module.selective_scan_bwd(out, **args, checkpoints=checkpoints[:, :, :1].copy())
    with pytest.raises(ValueError, match="dout must have shape"):
        module.selective_scan_bwd(out[:1].copy(), **args, checkpoints=checkpoints)


@needs_cpp
def test_launchers_reject_non_cpu_or_integer_tensors():
    inputs, softplus = make_inputs(1, 2, 5, 2, seed=201)
    inputs["delta"] = inputs["delta"].to(torch.int32)
    with pytest.raises(TypeError, match="delta must be a floating-point tensor"):
        native.forward(**inputs, delta_softplus=softplus)
    with pytest.raises(ValueError, match="positive int"):
        native.set_num_threads(0)


def test_float32_results_are_far_from_a_zero_answer():
    """Guards the parity tests against a vacuous pass: the reference's outputs and gradients are not ~0."""
    inputs, softplus = make_inputs(2, 5, 63, 16, seed=211)
    out64, last64, grads64 = reference64(inputs, softplus, random_dout(inputs, 212))
    assert rel_err(torch.zeros_like(out64), out64) == 1.0
    assert all(g.abs().max() > 1e-3 for g in grads64.values())
