"""causal_conv1d against a float64 loop over the taps, and the package kernel against F.conv1d on CUDA."""
from __future__ import annotations

import pytest
import torch

from retailsim.ops.causal_conv import causal_conv1d, causal_conv1d_torch, package_available
from tests.tolerances import FP32_GRAD_REL_ERR, assert_fp32_close


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


@pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("length", [1, 3, 63])
def test_matches_float64_loop_with_gradients(activation, with_bias, length):
    x, weight, bias = make(2, 5, length, 4, seed=length)
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
