"""selective_scan on every path against a float64 step-by-step reference (SPEC 6.2, 6.5).

CPU paths: ``torch`` (chunked PyTorch), ``triton`` (through the Triton interpreter; shapes kept small because
the interpreter runs the scans element by element), ``native`` (once the C++ kernel's wrapper exists).
CUDA-marked tests run the Triton kernels on the GPU at bigger shapes.
"""
from __future__ import annotations

import pytest
import torch

from retailsim.ops import backend, backend_info
from retailsim.ops.selective_scan import selective_scan, selective_scan_ref
from retailsim.ops.selective_scan import torch_scan
from retailsim.ops.selective_scan.function import native_launchers
from tests.ops.selective_scan_cases import OPTIONS
from tests.tolerances import (
    FP32_GRAD_REL_ERR,
    FP32_REL_ERR,
    SCAN_EXTREME_REL_ERR,
    assert_fp32_close,
    assert_low_precision_close,
)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def use_path(path: str, device: torch.device = torch.device("cpu")) -> None:
    if path == "triton" and not backend.triton_runs_on(device):
        pytest.skip("Triton cannot run on these tensors (CPU needs TRITON_INTERPRET=1 before import)")
    if path == "native" and native_launchers() is None:
        pytest.skip("the C++ selective_scan kernel (retailsim/ops/selective_scan/native.py) is not available")
    backend.set_backend(path)


def make_inputs(batch, dim, length, dstate, *, seed, groups=None, options="all", dtype=torch.float32,
                device="cpu", delta=None):
    """Fresh random inputs (never zeros). A, D, delta_bias stay float32 as in the model."""
    generator = torch.Generator().manual_seed(seed)
    has_D, has_z, has_bias, softplus = OPTIONS[options]

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dt)

    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    inputs = dict(
        u=randn(batch, dim, length),
        delta=delta.to(device=device, dtype=dtype) if delta is not None else randn(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, dstate, generator=generator) + 0.5).to(device=device, dtype=torch.float32),
        B=randn(*bc_shape),
        C=randn(*bc_shape),
        D=randn(dim, dt=torch.float32) if has_D else None,
        z=randn(batch, dim, length) if has_z else None,
        delta_bias=randn(dim, scale=0.3, dt=torch.float32) if has_bias else None,
    )
    if not softplus and delta is None:
        # A positive step, as softplus would give: a negative Δ + bias makes exp(Δ A) > 1 and the state
        # overflows float32 within a few hundred steps (seen on CUDA at L = 200), which no model produces.
        inputs["delta"] = inputs["delta"].abs()
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    return inputs, softplus


def run(inputs, softplus, dout, *, fn=selective_scan, cast=None):
    """(out, last_state, grads by name) of ``fn`` on leaf copies of ``inputs`` (cast to ``cast`` if given)."""
    leaves = {}
    for name, tensor in inputs.items():
        if tensor is not None:
            tensor = tensor.detach().clone() if cast is None else tensor.detach().to(cast)
            leaves[name] = tensor.requires_grad_(True)
        else:
            leaves[name] = None
    out, last = fn(**leaves, delta_softplus=softplus, return_last_state=True)
    out.backward(dout.to(out.dtype))
    grads = {name: leaves[name].grad for name in GRAD_NAMES if leaves[name] is not None}
    return out.detach(), last.detach(), grads


def truth(inputs, softplus, dout):
    return run(inputs, softplus, dout, fn=selective_scan_ref, cast=torch.float64)


def assert_parity(inputs, softplus, seed, out_bound=FP32_REL_ERR, grad_bound=FP32_GRAD_REL_ERR):
    torch.manual_seed(seed)
    dout = torch.randn(inputs["u"].shape, device=inputs["u"].device)
    out, last, grads = run(inputs, softplus, dout)
    out64, last64, grads64 = truth(inputs, softplus, dout)
    assert out.dtype == inputs["u"].dtype and last.shape == last64.shape
    assert_fp32_close(out, out64, "out", out_bound)
    assert_fp32_close(last, last64, "last_state", out_bound)
    assert set(grads) == set(grads64)
    for name in grads64:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_fp32_close(grads[name], grads64[name], f"d{name}", grad_bound)


PATHS = ["torch", "triton", "native"]
SHAPES = {  # id -> (batch, dim, L, N, groups); dims not powers of two; the interpreter sets the sizes
    "L1-dim3-N1": (2, 3, 1, 1, None),
    "L63-dim5-N16": (2, 5, 63, 16, None),
    "L63-dim6-N16-groups3": (2, 6, 63, 16, 3),
    "L33-dim3-N64": (1, 3, 33, 64, None),
    "L256-dim3-N4-groups3": (1, 3, 256, 4, 3),
}  # L = 4097 runs in test_long_sequence_extreme_delta


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("options", list(OPTIONS))
def test_options_on_and_off(path, options):
    use_path(path)
    inputs, softplus = make_inputs(2, 5, 37, 16, seed=11, options=options)
    assert_parity(inputs, softplus, seed=12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes(path, shape):
    use_path(path)
    batch, dim, length, dstate, groups = SHAPES[shape]
    inputs, softplus = make_inputs(batch, dim, length, dstate, seed=21, groups=groups)
    assert_parity(inputs, softplus, seed=22)


def test_torch_path_many_chunks(monkeypatch):
    """Chunk boundaries in the PyTorch path carry the state and the adjoint exactly."""
    use_path("torch")
    monkeypatch.setattr(torch_scan, "CHUNK_ELEMENTS", 2 * 7 * 16 * 5)  # 5 steps per chunk
    inputs, softplus = make_inputs(2, 7, 48, 16, seed=31, groups=7)
    assert_parity(inputs, softplus, seed=32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_within_twice_the_reference_error(path, dtype):
    use_path(path)
    inputs, softplus = make_inputs(2, 5, 63, 16, seed=41, dtype=dtype)
    torch.manual_seed(42)
    dout = torch.randn(inputs["u"].shape).to(dtype)
    out, last, grads = run(inputs, softplus, dout)
    ref_out, _, ref_grads = run(inputs, softplus, dout, fn=selective_scan_ref)
    out64, last64, grads64 = truth(inputs, softplus, dout)
    assert out.dtype == dtype
    assert_low_precision_close(out, ref_out, out64, "out")
    assert_fp32_close(last, last64, "last_state")  # the state is float32 on every path
    for name in grads64:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_grad_close(grads[name], ref_grads[name], grads64[name], f"d{name}")


def assert_grad_close(grad, ref_grad, grad64, what):
    """Low-precision gradients against 2x the reference's error; float32 ones (A, D, Δ-bias) at fp32 bounds."""
    if grad.dtype == torch.float32:
        assert_fp32_close(grad, grad64, what, FP32_GRAD_REL_ERR)
    else:
        assert_low_precision_close(grad, ref_grad, grad64, what)


def _gradcheck_inputs(seed, length, groups=None):
    inputs, softplus = make_inputs(1, 2, length, 2, seed=seed, groups=groups, dtype=torch.float64)
    for name in ("A", "D", "delta_bias"):
        inputs[name] = inputs[name].double()
    return inputs, softplus


@pytest.mark.parametrize("path", PATHS)
def test_float64_gradcheck(path, monkeypatch):
    use_path(path)
    if path == "torch":
        monkeypatch.setattr(torch_scan, "CHUNK_ELEMENTS", 2 * 2 * 4)  # 4 steps per chunk
    inputs, softplus = _gradcheck_inputs(51, length=19, groups=2)
    names = list(inputs)
    leaves = [inputs[n].detach().clone().requires_grad_(True) for n in names]

    def fn(*tensors):
        out, last = selective_scan(**dict(zip(names, tensors)), delta_softplus=softplus, return_last_state=True)
        return out

    # The interpreter runs a kernel per evaluation: fast mode checks random projections of the Jacobian.
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=path == "triton")


@pytest.mark.parametrize("path", PATHS)
def test_run_twice_identical_bits(path):
    use_path(path)
    # The interpreter runs the Triton backward's state loop in Python (about 0.1 s per state and chunk here);
    # 4 states test its determinism as well as 16 and keep the suite's time (CUDA runs 16: cuda tests below).
    inputs, softplus = make_inputs(2, 6, 40, 4 if path == "triton" else 16, seed=61, groups=2)
    dout = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(62))
    first = run(inputs, softplus, dout)
    second = run(inputs, softplus, dout)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name


@pytest.mark.parametrize("path", PATHS)
def test_strided_views_match_contiguous(path):
    """u and z sliced from one projection, Δ and B/C transposed views: same bits as contiguous copies."""
    use_path(path)
    batch, dim, length, dstate = 2, 5, 40, 16
    generator = torch.Generator().manual_seed(71)
    xz = torch.randn(batch, 2 * dim, length, generator=generator)               # in_proj output
    x_dbl = torch.randn(batch, length, dim + 2 * dstate, generator=generator)   # x_proj output, (b, L, ...)
    u, z = xz[:, :dim], xz[:, dim:]
    delta = x_dbl[..., :dim].transpose(1, 2).abs()
    B = x_dbl[..., dim:dim + dstate].transpose(1, 2)
    C = x_dbl[..., dim + dstate:].transpose(1, 2)
    A = -torch.rand(dim, dstate, generator=generator) - 0.5
    D = torch.randn(dim, generator=generator)
    strided = selective_scan(u, delta, A, B, C, D, z, return_last_state=True)
    contiguous = selective_scan(*(t.contiguous() for t in (u, delta, A, B, C, D, z)), return_last_state=True)
    assert torch.equal(strided[0], contiguous[0]) and torch.equal(strided[1], contiguous[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("length, groups", [(1, None), (37, None), (20, 2)])
def test_channel_major_layouts_match_the_reference(path, length, groups):
    """u, Δ and z as transposed (batch, L, dim) tensors (contiguous along the channels, as the mixer's
    projections give them) and B/C contiguous along N: the Triton forward reads these one step at a time
    instead of in per-thread tiles and writes out in u's layout. float64 parity, gradients included."""
    use_path(path)
    inputs, softplus = make_inputs(2, 6, length, 16, seed=91, groups=groups)
    for name in ("u", "delta", "z"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    for name in ("B", "C"):
        inputs[name] = inputs[name].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert inputs["u"].stride(1) == 1 and inputs["B"].stride(-2) == 1
    assert_parity(inputs, softplus, seed=92)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("regime", ["tiny-delta", "huge-delta", "mixed-delta"])
def test_long_sequence_extreme_delta(path, regime):
    """4097 steps with Δ down to ~1e-9 (softplus of -20) or up to 1e2: finite, and still matching. Under the
    interpreter (~100 s per 4097-step run) the Triton path takes 4097 steps in the mixed regime and 1041 (not a
    multiple of the chunk either) in the two others."""
    use_path(path)
    generator = torch.Generator().manual_seed(81)
    shape = (1, 1, 1041 if path == "triton" and regime != "mixed-delta" else 4097)
    raw = {
        "tiny-delta": -20.0 + torch.randn(shape, generator=generator),
        "huge-delta": 60.0 + 40.0 * torch.rand(shape, generator=generator),
        "mixed-delta": torch.empty(shape).uniform_(-9.2, 4.6, generator=generator).exp(),
    }[regime]
    inputs, _ = make_inputs(*shape, 2, seed=82, options="all", delta=raw)
    inputs["delta_bias"] = None
    softplus = regime != "mixed-delta"
    torch.manual_seed(83)
    dout = torch.randn(shape)
    out, last, grads = run(inputs, softplus, dout)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())
    out64, last64, grads64 = truth(inputs, softplus, dout)
    assert_fp32_close(out, out64, "out", SCAN_EXTREME_REL_ERR)
    for name in grads64:
        assert_fp32_close(grads[name], grads64[name], f"d{name}", SCAN_EXTREME_REL_ERR)


def test_last_state_has_no_gradient_and_is_optional():
    use_path("torch")
    inputs, softplus = make_inputs(1, 3, 8, 4, seed=91)
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8)
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True)
    assert out.requires_grad and not last.requires_grad and last.dtype == torch.float32


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(delta=torch.ones(2, 4, 9)), "delta must have shape"),
        (dict(A=torch.ones(4)), "A must be a \\(dim, N\\) tensor"),
        (dict(B=torch.ones(2, 3, 5, 8)), "B has 3 groups, which must divide dim=4"),
        (dict(C=torch.ones(2, 5, 7)), "C must have shape"),
        (dict(D=torch.ones(5)), "D must have shape"),
        (dict(z=torch.ones(2, 4, 8, dtype=torch.int64)), "z must be float32, float16, bfloat16"),
    ],
    ids=["delta-shape", "A-rank", "B-groups", "C-shape", "D-shape", "z-dtype"],
)
def test_user_errors_name_the_argument(change, message):
    args = dict(u=torch.randn(2, 4, 8), delta=torch.rand(2, 4, 8), A=-torch.rand(4, 5),
                B=torch.randn(2, 5, 8), C=torch.randn(2, 5, 8))
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        selective_scan(**args)


def test_backend_info_names_the_scan_path():
    info = backend_info()["ops"]["selective_scan"]
    assert info["mps"] == "torch" and info["cpu"] in ("torch", "native")


# ---- CUDA: the Triton kernels compiled for the GPU, at sizes the interpreter cannot afford ----
CUDA_SHAPES = {
    "L1-dim37-N16": (2, 37, 1, 16, None),
    "L63-dim100-N16": (2, 100, 63, 16, None),
    "L256-dim96-N64-groups4": (2, 96, 256, 64, 4),
    "L4097-dim48-N16": (1, 48, 4097, 16, None),
    "L300-dim64-N1": (2, 64, 300, 1, None),
}


@pytest.mark.cuda
@pytest.mark.parametrize("shape", list(CUDA_SHAPES))
def test_cuda_triton_parity(shape):
    device = torch.device("cuda")
    use_path("triton", device)
    torch.backends.cuda.matmul.allow_tf32 = False
    batch, dim, length, dstate, groups = CUDA_SHAPES[shape]
    inputs, softplus = make_inputs(batch, dim, length, dstate, seed=101, groups=groups, device=device)
    assert_parity(inputs, softplus, seed=102)


@pytest.mark.cuda
@pytest.mark.parametrize("options", list(OPTIONS))
def test_cuda_triton_options(options):
    device = torch.device("cuda")
    use_path("triton", device)
    inputs, softplus = make_inputs(2, 80, 200, 16, seed=111, options=options, device=device)
    assert_parity(inputs, softplus, seed=112)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_triton_low_precision(dtype):
    device = torch.device("cuda")
    use_path("triton", device)
    inputs, softplus = make_inputs(2, 64, 300, 16, seed=121, dtype=dtype, device=device)
    dout = torch.randn(inputs["u"].shape, device=device).to(dtype)
    out, _, grads = run(inputs, softplus, dout)
    ref_out, _, ref_grads = run(inputs, softplus, dout, fn=selective_scan_ref)
    out64, _, grads64 = truth(inputs, softplus, dout)
    assert_low_precision_close(out, ref_out, out64, "out")
    for name in grads64:
        assert_grad_close(grads[name], ref_grads[name], grads64[name], f"d{name}")


@pytest.mark.cuda
def test_cuda_triton_deterministic_and_strided():
    device = torch.device("cuda")
    use_path("triton", device)
    inputs, softplus = make_inputs(2, 128, 1000, 16, seed=131, groups=4, device=device)
    dout = torch.randn(inputs["u"].shape, device=device)
    first, second = run(inputs, softplus, dout), run(inputs, softplus, dout)
    assert torch.equal(first[0], second[0])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name
    xz = torch.randn(2, 256, 1000, device=device)
    u, z = xz[:, :128], xz[:, 128:]
    strided = selective_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], z=z)
    contiguous = selective_scan(u.contiguous(), inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                z=z.contiguous())
    assert torch.equal(strided, contiguous)


def test_backend_is_fixed_when_the_call_is_recorded():
    """Switching the backend between forward and backward does not change who runs the backward."""
    use_path("torch")
    inputs, softplus = make_inputs(1, 3, 20, 4, seed=141, groups=3)
    dout = torch.randn(1, 3, 20, generator=torch.Generator().manual_seed(142))
    expected = run(inputs, softplus, dout)[2]
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus)
    backend.set_backend("native" if native_launchers() is not None else "triton")
    out.backward(dout)
    for name, grad in expected.items():
        assert torch.equal(leaves[name].grad, grad), name
