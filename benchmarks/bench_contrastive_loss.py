"""contrastive_loss forward+backward against the peers a user would pick instead (SPEC 7): the eager
full-matrix loss (our float64 parity reference, run in the benchmark dtype) and torch.compile of it.
Time and peak memory per call. CUDA: the SPEC shape 4096 x 4096 x 512 in bf16 and fp32 (fp32 with IEEE
products, TF32 off, for both us and the peers). CPU: a reduced shape, named in the group, since the SPEC
shape takes tens of seconds per call on 2 cores. ``--quick``: tiny shapes, eager and ours only."""
from __future__ import annotations

import pytest
import torch

from harness import Work, measure
from retailsim.ops import backend, contrastive_loss
from retailsim.ops.contrastive_loss.reference import contrastive_loss_ref

CUDA_SHAPE = (4096, 4096, 512)
CPU_SHAPE = (1024, 1024, 256)
QUICK_SHAPE = (64, 96, 32)
ITEMS_PER_BASKET = 16  # groups as in training: a basket's items share a group; labels are product ids


def problem(shape, dtype, device, seed=0):
    n, m, d = shape
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    candidates = torch.randn(m, d, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    candidate_group = (torch.arange(m) // ITEMS_PER_BASKET).to(device)
    anchor_group = (torch.arange(n) * m // max(n, 1) // ITEMS_PER_BASKET).to(device)
    positive = torch.randint(0, m, (n,), generator=gen).to(device)
    label = torch.randint(0, max(2, m // 2), (m,), generator=gen).to(device)
    ids = dict(positive_index=positive, anchor_group=anchor_group, candidate_group=candidate_group,
               candidate_label=label)
    return anchors, candidates, ids


def fwd_bwd(loss_fn, anchors, candidates, ids):
    def step():
        loss = loss_fn(anchors, candidates, **ids)
        return torch.autograd.grad(loss, (anchors, candidates))
    return step


def cases(device_type: str, quick: bool):
    if quick:
        return [(QUICK_SHAPE, torch.float32)]
    if device_type == "cuda":
        return [(CUDA_SHAPE, torch.bfloat16), (CUDA_SHAPE, torch.float32)]
    return [(CPU_SHAPE, torch.float32)]


IMPLS = ("ours", "eager", "torch.compile")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(2), ids=lambda i: f"case{i}")
def test_contrastive_fwd_bwd(benchmark, device, quick, impl, case):
    all_cases = cases(device.type, quick)
    if case >= len(all_cases):
        pytest.skip("no such case on this device")
    shape, dtype = all_cases[case]
    if impl == "torch.compile" and quick:
        pytest.skip("torch.compile peer: skipped in --quick dry runs (compilation alone takes minutes on CPU)")
    backend.set_backend(None)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        anchors, candidates, ids = problem(shape, dtype, device)
        if impl == "ours":
            loss_fn = contrastive_loss
        elif impl == "eager":
            loss_fn = contrastive_loss_ref
        else:
            loss_fn = torch.compile(contrastive_loss_ref)
        where = "" if device.type == "cuda" or quick else " (CPU: reduced from 4096x4096x512)"
        group = f"contrastive fwd+bwd {shape[0]}x{shape[1]}x{shape[2]} {str(dtype).replace('torch.', '')}{where}"
        n, m, d = shape
        # The least: both operands read once and their gradients written once; S = A C^T, dA = P C, dC = P^T A.
        # fp32 keeps fp32 accuracy at best through three TF32 products each (what our kernel does).
        fp32 = dtype == torch.float32
        work = Work(bytes=2 * (n + m) * d * anchors.element_size(), tc_flops=(3 if fp32 else 1) * 6 * n * m * d,
                    exps=n * m, tc_peak="tf32" if fp32 else "bf16")
        measure(benchmark, fwd_bwd(loss_fn, anchors, candidates, ids), device=device, group=group, work=work,
                impl=impl, ours=impl == "ours",
                backend=backend.resolve("contrastive_loss", device, has_native=False) if impl.startswith("ours")
                else "")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
