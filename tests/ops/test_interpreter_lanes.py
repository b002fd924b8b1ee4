"""No lane of a Triton kernel ever holds an overflow or a NaN, even where it is later masked (issue 16): run
under the interpreter, every kernel's NumPy arithmetic is checked with overflow, invalid and divide raising
(underflow to 0 is what an exp of a masked -inf lane is meant to give, so it stays quiet)."""
import numpy as np
import pytest
import torch

from retailsim.ops import backend, contrastive_loss, focal_loss, selective_scan, set_backend

pytestmark = pytest.mark.skipif(not backend.triton_runs_on(torch.device("cpu")),
                                reason="needs Triton's interpreter (TRITON_INTERPRET=1)")


def _checked(fn):
    set_backend("triton")
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        fn()


def test_contrastive_kernels_keep_every_lane_finite():
    gen = torch.Generator().manual_seed(0)
    anchors = torch.randn(50, 40, generator=gen, requires_grad=True)
    candidates = torch.randn(70, 40, generator=gen, requires_grad=True)
    positive = torch.randint(0, 70, (50,), generator=gen)
    positive[::5] = -1
    groups = torch.randint(0, 5, (50,), generator=gen), torch.randint(0, 5, (70,), generator=gen)
    label = torch.randint(0, 9, (70,), generator=gen)

    def run():
        for reduction in ("mean", "none"):
            loss = contrastive_loss(anchors, candidates, positive, *groups, label, temperature=0.05,
                                    reduction=reduction)
            torch.autograd.grad(loss.sum(), (anchors, candidates))

    _checked(run)


def test_focal_kernel_keeps_every_lane_finite():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(9, 77, generator=gen) * 30).requires_grad_()  # confident rows, a partial last block
    target = torch.randint(0, 77, (9,), generator=gen)
    target[2] = -100
    _checked(lambda: focal_loss(logits, target, gamma=2.0).backward())


def test_scan_kernels_keep_every_lane_finite():
    gen = torch.Generator().manual_seed(2)
    b, d, length, n = 2, 5, 37, 3  # padded channel, state and step lanes

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    inputs = dict(u=randn(b, d, length), delta=randn(b, d, length, scale=4.0),
                  A=(-torch.rand(d, n, generator=gen) * 8 - 0.5).requires_grad_(), B=randn(b, n, length),
                  C=randn(b, n, length), D=randn(d), z=randn(b, d, length, scale=10.0), delta_bias=randn(d))

    def run():
        out = selective_scan(**inputs, delta_softplus=True)
        torch.autograd.grad(out.sum(), list(inputs.values()))

    _checked(run)
