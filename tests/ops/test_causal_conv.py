"""causal_conv1d against a float64 loop over the taps (on CPU the C++ kernel when built, rerun on F.conv1d
by ``make test``'s RETAILSIM_NATIVE=0 pass), the C++ kernel's own contract (layouts, gradcheck, determinism,
malformed buffers), and the package kernel against F.conv1d on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retailsim import native
from retailsim.ops import backend
from retailsim.ops.causal_conv import causal_conv1d, causal_conv1d_torch, implementation, package_available
from tests.tolerances import FP32_GRAD_REL_ERR, assert_fp32_close

needs_cpp = pytest.mark.skipif(implementation("cpu") != "native",
                               reason="retailsim._native with the causal conv kernel is not available")


def conv_loop64(x, weight, bias, activation):
    """out[t] = bias + Σ_k w[k] x[t - (width-1) + k], in float64, one tap at a time."""
    x, weight = x.double(), weight.double()
    batch, dim, length = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, length, dtype=torch.float64) if bias is None else bias.double()[:, None].expand(
        batch, dim, length).clone()
    for k in range(width):
        shift = width - 1 - k
        out[..., shift:] += weight[:, k, None] * x[..., : length - shift]
    return torch.nn.functional.silu(out) if activation else out


def make(batch, dim, length, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, length, generator=generator), torch.randn(dim, width, generator=generator),
            torch.randn(dim, generator=generator))


def time_major(x: torch.Tensor) -> torch.Tensor:
    """The same (batch, dim, L) values stored as (batch, L, dim)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.native_parity
@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("length,dim,layout", [(1, 5, "contiguous"), (3, 5, "contiguous"), (63, 5, "contiguous"),
                                               (130, 19, "time-major"), (70, 3, "time-major")])
def test_matches_float64_loop_with_gradients(activation, with_bias, length, dim, layout):
    x, weight, bias = make(2, dim, length, 4, seed=length)
    if layout == "time-major":
        x = time_major(x)
    bias = bias if with_bias else None
    leaves = [t.clone().requires_grad_(True) for t in (x, weight) + ((bias,) if with_bias else ())]
    out = causal_conv1d(leaves[0], leaves[1], leaves[2] if with_bias else None, activation=activation)
    leaves64 = [t.double().requires_grad_(True) for t in leaves]
    out64 = conv_loop64(leaves64[0], leaves64[1], leaves64[2] if with_bias else None, activation)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_fp32_close(out, out64, "out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad(out, leaves, dout)
    grads64 = torch.autograd.grad(out64, leaves64, dout.double())
    for name, grad, grad64 in zip(("x", "weight", "bias"), grads, grads64):
        assert_fp32_close(grad, grad64, f"d{name}", FP32_GRAD_REL_ERR)


@needs_cpp
@pytest.mark.parametrize("width", [1, 4])
def test_native_kernel_gradcheck_float64(width):
    x, weight, bias = (t.double().requires_grad_(True) for t in make(2, 3, 70, width, seed=20 + width))
    for layout in (lambda t: t, time_major):
        assert torch.autograd.gradcheck(lambda a, w, b: causal_conv1d(a, w, b, activation="silu"),
                                        (layout(x.detach()).requires_grad_(True), weight, bias))


@needs_cpp
def test_native_kernel_reads_views_in_place_and_keeps_their_layout():
    """A time-major slice of one projection: same bits as a contiguous copy; out and dx come back time-major."""
    generator = torch.Generator().manual_seed(31)
    xz = torch.randn(3, 150, 2 * 24, generator=generator)          # (batch, L, 2 dim), a matmul output
    x = xz[..., :24].transpose(1, 2)
    weight, bias = torch.randn(24, 4, generator=generator), torch.randn(24, generator=generator)
    dout = torch.randn(3, 24, 150, generator=generator)
    results = []
    for source in (x, x.contiguous()):
        leaf = source.clone().requires_grad_(True) if source.is_contiguous() else source.detach().requires_grad_(True)
        out = causal_conv1d(leaf, weight, bias, activation="silu")
        results.append((out, torch.autograd.grad(out, leaf, dout)[0]))
    (out_view, dx_view), (out_copy, dx_copy) = results
    assert torch.equal(out_view, out_copy) and torch.equal(dx_view, dx_copy)
    assert out_view.transpose(1, 2).is_contiguous() and dx_view.transpose(1, 2).is_contiguous()
    assert out_copy.is_contiguous() and dx_copy.is_contiguous()


@needs_cpp
def test_native_kernel_bits_do_not_depend_on_threads():
    x, weight, bias = make(8, 64, 1000, 4, seed=41)  # 2M multiply-adds: enough work for every thread count asked
    x = time_major(x)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(42))
    module = native.load()
    arrays = (x.numpy(), weight.numpy(), bias.numpy())
    runs = [(module.causal_conv1d_fwd(*arrays, silu=True, num_threads=n),
             module.causal_conv1d_bwd(dout.numpy(), *arrays, silu=True, num_threads=n)) for n in (1, 2, 3, 1)]
    for out, grads in runs[1:]:
        assert np.array_equal(out, runs[0][0])
        for got, first in zip(grads, runs[0][1]):
            assert np.array_equal(got, first)


@pytest.mark.native_parity
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_inputs_keep_their_dtype_and_stay_close(dtype):
    x, weight, bias = make(2, 19, 70, 4, seed=51)
    weight.requires_grad_(True)
    x_low = time_major(x).to(dtype).requires_grad_(True)
    out = causal_conv1d(x_low, weight, bias, activation="silu")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(52)).to(dtype)
    dx, dweight = torch.autograd.grad(out, (x_low, weight), dout)
    assert out.dtype == dx.dtype == dtype and dweight.dtype == torch.float32
    x64 = x_low.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    out64 = conv_loop64(x64, w64, bias.double(), "silu")
    dx64, dw64 = torch.autograd.grad(out64, (x64, w64), dout.double())
    tolerance = {torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]  # the output's rounding to dtype
    for name, got, want in (("out", out, out64), ("dx", dx, dx64), ("dweight", dweight, dw64)):
        err = ((got.double() - want).abs().max() / want.abs().max()).item()
        assert err < tolerance, (name, err)


@pytest.mark.native_parity
def test_gradient_of_one_input_only():
    x, weight, bias = make(2, 5, 30, 4, seed=61)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(62))
    leaf_w = weight.clone().requires_grad_(True)
    (dweight,) = torch.autograd.grad(causal_conv1d(x, leaf_w, bias, activation="silu"), leaf_w, dout)
    leaf_x = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(causal_conv1d(leaf_x, weight, bias, activation="silu"), leaf_x, dout)
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    dx64, dw64 = torch.autograd.grad(conv_loop64(x64, w64, bias.double(), "silu"), (x64, w64), dout.double())
    assert_fp32_close(dweight, dw64, "dweight", FP32_GRAD_REL_ERR)
    assert_fp32_close(dx, dx64, "dx", FP32_GRAD_REL_ERR)


@needs_cpp
def test_second_derivatives_raise_instead_of_coming_back_as_zeros():
    x, weight, bias = make(1, 3, 10, 4, seed=71)
    x.requires_grad_(True)
    out = causal_conv1d(x, weight, bias, activation="silu")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(72)).requires_grad_(True)
    (dx,) = torch.autograd.grad(out, x, dout, create_graph=True)  # as gradgradcheck calls it
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


@needs_cpp
def test_native_kernel_threads_follow_the_shared_setting(monkeypatch):
    module, seen = native.load(), []
    real = module.causal_conv1d_fwd

    def spy(*args, **kwargs):
        seen.append(kwargs["num_threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "causal_conv1d_fwd", spy)
    x, weight, bias = make(1, 3, 10, 4, seed=81)
    try:
        native.set_num_threads(3)
        causal_conv1d(x, weight, bias)
        native.set_num_threads(None)
        causal_conv1d(x, weight, bias)
    finally:
        native.set_num_threads(None)
    assert seen == [3, max(1, torch.get_num_threads())]


@needs_cpp
def test_native_kernel_serves_cpu_and_follows_the_backend_request():
    assert implementation("cpu") == "native"
    backend.set_backend("torch")
    try:
        assert implementation("cpu") == "torch"
    finally:
        backend.set_backend(None)


@needs_cpp
@pytest.mark.parametrize("change,error,message", [
    (dict(x=np.zeros((2, 4), np.float32)), ValueError, "x must have shape (batch, dim, L)"),
    (dict(weight=np.zeros((3, 4), np.float32)), ValueError, "weight must have shape (dim, width) = (4, width >= 1)"),
    (dict(weight=np.zeros((4, 3), np.float32).T.copy().T), ValueError, "weight must be C-contiguous"),
    (dict(bias=np.zeros(5, np.float32)), ValueError, "bias must have shape (4,)"),
    (dict(bias=np.zeros(4, np.float64)), TypeError, "bias must be float32"),
    (dict(x=np.zeros((2, 4, 10), np.float32)[:, :, ::-1]), ValueError, "x must have non-negative strides"),
    (dict(num_threads=-1), ValueError, "num_threads must be >= 0"),
])
def test_native_kernel_rejects_malformed_buffers(change, error, message):
    rng = np.random.default_rng(5)
    args = dict(x=rng.standard_normal((2, 4, 10)).astype(np.float32),
                weight=rng.standard_normal((4, 3)).astype(np.float32), bias=None, silu=True)
    args.update(change)
    with pytest.raises(error) as raised:
        native.load().causal_conv1d_fwd(**args)
    assert message in str(raised.value)


def test_causal_future_inputs_do_not_leak():
    x, weight, bias = make(1, 3, 20, 4, seed=3)
    changed = x.clone()
    changed[..., 10:] = torch.randn(1, 3, 10)
    assert torch.equal(causal_conv1d(x, weight, bias)[..., :10], causal_conv1d(changed, weight, bias)[..., :10])


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(x=torch.ones(2, 5)), "x must be a \\(batch, dim, L\\) tensor"),
        (dict(weight=torch.ones(4, 4)), "weight must have shape \\(dim=5, width\\)"),
        (dict(bias=torch.ones(4)), "bias must have shape \\(5,\\)"),
        (dict(activation="relu"), "activation must be None, 'silu' or 'swish'"),
    ],
    ids=["x-rank", "weight-shape", "bias-shape", "activation"],
)
def test_user_errors_name_the_argument(args, message):
    full = dict(x=torch.ones(2, 5, 8), weight=torch.ones(5, 4), bias=None, activation=None)
    full.update(args)
    with pytest.raises(ValueError, match=message):
        causal_conv1d(**full)


@pytest.mark.cuda
@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
def test_cuda_matches_torch_implementation(activation):
    if not package_available():
        pytest.skip("causal-conv1d is not installed: the CUDA path is F.conv1d, tested on CPU")
    x, weight, bias = (t.cuda() for t in make(2, 64, 300, 4, seed=11))
    out = causal_conv1d(x, weight, bias, activation=activation)
    # the package accumulates the taps in its own order: held to the gradient bound, not bit-for-bit
    assert_fp32_close(out, causal_conv1d_torch(x, weight, bias, activation), "out", FP32_GRAD_REL_ERR)
