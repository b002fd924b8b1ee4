"""torch.compile(fullgraph=True) through the ops' custom ops: no graph break, and results equal to eager."""
from __future__ import annotations

import pytest
import torch

from retailsim.ops import backend, causal_conv1d, contrastive_loss, selective_scan, set_backend
from retailsim.ops.selective_scan.function import native_launchers

CPU_BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    native_launchers() is None, reason="retailsim._native is not built (or RETAILSIM_NATIVE=0)"))]


def _compiled_matches_eager(fn, args, atol=0.0):
    """fn compiled with fullgraph=True (a graph break raises) gives eager's value and gradients."""
    torch._dynamo.reset()
    eager = fn(*args)
    eager_grads = torch.autograd.grad(eager, args)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    compiled_grads = torch.autograd.grad(compiled, args)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=atol)
    for got, expected in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_selective_scan_compiles_without_a_graph_break(backend_name):
    set_backend(backend_name)
    gen = torch.Generator().manual_seed(3)
    b, d, length, n = 2, 6, 70, 4

    def randn(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    args = (randn(b, d, length), randn(b, d, length), (-torch.rand(d, n, generator=gen) - 0.5).requires_grad_(),
            randn(b, n, length), randn(b, n, length), randn(d), randn(b, d, length), randn(d))

    def loss(u, delta, A, B, C, D, z, bias):
        out = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
        return (out * torch.linspace(-1, 1, length)).square().sum()

    _compiled_matches_eager(loss, args, atol=1e-5)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_causal_conv1d_compiles_without_a_graph_break(backend_name):
    set_backend(backend_name)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 6, generator=gen).transpose(1, 2).requires_grad_()  # time-major, as the model's
    weight = torch.randn(6, 4, generator=gen).requires_grad_()
    bias = torch.randn(6, generator=gen).requires_grad_()

    def loss(x, weight, bias):
        return (causal_conv1d(x, weight, bias, activation="silu") * torch.linspace(-1, 1, 40)).square().sum()

    _compiled_matches_eager(loss, (x, weight, bias), atol=1e-5)


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_contrastive_loss_compiles_without_a_graph_break(backend_name, reduction):
    if backend_name == "triton" and not backend.triton_runs_on(torch.device("cpu")):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    set_backend(backend_name)
    gen = torch.Generator().manual_seed(6)
    anchors = torch.randn(30, 24, generator=gen).requires_grad_()
    candidates = torch.randn(30, 24, generator=gen).requires_grad_()
    group = torch.arange(30) // 5
    positive = (torch.arange(30) + 1) % 30
    positive[::7] = -1
    label = torch.randint(0, 12, (30,), generator=gen)

    def loss(a, c):
        out = contrastive_loss(a, c, positive, group, group, label, reduction=reduction)
        return out if reduction == "mean" else (out * torch.linspace(0, 1, 30)).sum()

    _compiled_matches_eager(loss, (anchors, candidates), atol=1e-6)
