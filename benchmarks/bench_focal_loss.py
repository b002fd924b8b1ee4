"""focal_loss and linear_focal_loss, forward + backward, against the peers a user would pick instead (SPEC 7):
eager PyTorch (``cross_entropy`` + ``gather``, from the reference module the tests use), ``torch.compile`` of
it, and Liger-Kernel's cross-entropy / fused linear cross-entropy at gamma = 0 (CUDA only, when installed).

Shapes: CUDA runs the SPEC shapes in bf16 (focal 2048 x 5003 logits; fused linear 2048 x 512 x 5003 and
8192 x 512 x 131072). The CPU default is reduced (named in each group) since the full ones take minutes on
two cores; ``--quick`` shrinks everything for a dry run (``torch.compile`` then uses the aot_eager backend).
"""
from __future__ import annotations

import pytest
import torch

from harness import Work, measure
from retailsim.ops import backend as ops_backend
from retailsim.ops.focal_loss import focal_loss, linear_focal_loss
from retailsim.ops.focal_loss.reference import focal_loss_eager, linear_focal_loss_eager

GAMMA = 2.0


def _shapes(device, quick):
    """(rows, hidden, V) per problem; the linear ones end with the dtype."""
    if quick:
        return {"focal": (64, 0, 1003), "linear": [(64, 32, 1003)]}
    if device.type == "cuda":
        return {"focal": (2048, 0, 5003), "linear": [(2048, 512, 5003), (8192, 512, 131_072)]}
    return {"focal": (2048, 0, 5003), "linear": [(512, 512, 5003), (512, 512, 32_768)]}


def _dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _compile(fn, quick):
    return torch.compile(fn, backend="aot_eager") if quick else torch.compile(fn)


def _ours_name(device):
    return f"retailsim ({ops_backend.resolve('focal_loss', device, has_native=False)})"


def _fwd_bwd(loss_fn, leaves):
    """One training step's loss work: fresh gradients each call, so their allocation counts for everyone."""

    def step():
        for leaf in leaves:
            leaf.grad = None
        loss_fn().backward()

    return step


def _liger(name):
    try:
        import liger_kernel.transformers as liger  # imports triton at module import
    except Exception as error:  # noqa: BLE001 - any import failure means "cannot run here"
        pytest.skip(f"Liger-Kernel cannot run here ({type(error).__name__}: {error}); skipped")
    return getattr(liger, name)()


FOCAL_IMPLS = ["ours", "eager", "compiled", "liger"]


@pytest.mark.parametrize("gamma", [GAMMA, 0.0], ids=lambda g: f"gamma{g:g}")
@pytest.mark.parametrize("impl", FOCAL_IMPLS)
def test_focal_loss_fwd_bwd(benchmark, device, quick, impl, gamma):
    rows, _, n_cols = _shapes(device, quick)["focal"]
    dtype = _dtype(device)
    if impl == "liger" and (gamma != 0 or device.type != "cuda"):
        pytest.skip("Liger's cross-entropy is a peer at gamma = 0 on CUDA only")
    if impl == "compiled" and gamma == 0:
        pytest.skip("torch.compile is timed at gamma = 2, the training setting")
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, n_cols, device=device, dtype=dtype, generator=generator).requires_grad_()
    target = torch.randint(0, n_cols, (rows,), device=device, generator=generator)
    if impl == "ours":
        fn, name = (lambda: focal_loss(logits, target, gamma=gamma)), _ours_name(device)
    elif impl == "eager":
        fn, name = (lambda: focal_loss_eager(logits, target, gamma=gamma)), "eager (cross_entropy + gather)"
    elif impl == "compiled":
        compiled = _compile(focal_loss_eager, quick)
        fn, name = (lambda: compiled(logits, target, gamma=gamma)), "torch.compile(eager)"
    else:
        liger_ce = _liger("LigerCrossEntropyLoss")
        fn, name = (lambda: liger_ce(logits, target)), "Liger cross-entropy"
    group = f"focal_loss fwd+bwd {rows}x{n_cols} {str(dtype).removeprefix('torch.')} gamma={gamma:g}"
    # The least one fwd+bwd does: read the logits once, write their gradient once; one exp per logit.
    work = Work(bytes=2 * logits.numel() * logits.element_size(), fp32_flops=4 * logits.numel(), exps=logits.numel())
    measure(benchmark, _fwd_bwd(fn, [logits]), device=device, group=group, impl=name, ours=impl == "ours", work=work)


@pytest.mark.parametrize("gamma", [GAMMA, 0.0], ids=lambda g: f"gamma{g:g}")
@pytest.mark.parametrize("impl", FOCAL_IMPLS)
@pytest.mark.parametrize("size", ["small_vocab", "large_vocab"])
def test_linear_focal_loss_fwd_bwd(benchmark, device, quick, size, impl, gamma):
    shapes = _shapes(device, quick)["linear"]
    if size == "large_vocab" and len(shapes) < 2:
        pytest.skip("--quick runs one linear shape")
    rows, hidden_size, n_cols = shapes[0 if size == "small_vocab" else 1]
    dtype = _dtype(device)
    if impl == "liger" and (gamma != 0 or device.type != "cuda"):
        pytest.skip("Liger's fused linear cross-entropy is a peer at gamma = 0 on CUDA only")
    if impl == "compiled" and gamma == 0:
        pytest.skip("torch.compile is timed at gamma = 2, the training setting")
    generator = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(rows, hidden_size, device=device, dtype=dtype, generator=generator).requires_grad_()
    weight = torch.randn(n_cols, hidden_size, device=device, dtype=dtype, generator=generator)
    weight = (weight / hidden_size**0.5).requires_grad_()
    target = torch.randint(0, n_cols, (rows,), device=device, generator=generator)
    if impl == "ours":
        fn, name = (lambda: linear_focal_loss(hidden, weight, target, gamma=gamma)), _ours_name(device)
    elif impl == "eager":
        fn, name = (lambda: linear_focal_loss_eager(hidden, weight, target, gamma=gamma)), "eager (linear + focal)"
    elif impl == "compiled":
        compiled = _compile(linear_focal_loss_eager, quick)
        fn, name = (lambda: compiled(hidden, weight, target, gamma=gamma)), "torch.compile(eager)"
    else:
        liger_flce = _liger("LigerFusedLinearCrossEntropyLoss")
        fn, name = (lambda: liger_flce(weight, hidden, target)), "Liger fused linear cross-entropy"
    group = (f"linear_focal_loss fwd+bwd {rows}x{hidden_size}x{n_cols} {str(dtype).removeprefix('torch.')} "
             f"gamma={gamma:g}" + (" (CPU: reduced shape)" if device.type == "cpu" and not quick else ""))
    # The least: hidden and weight read once, their gradients written once, three (rows x H x V) products.
    work = Work(bytes=2 * (hidden.numel() + weight.numel()) * hidden.element_size(),
                tc_flops=6 * rows * hidden_size * n_cols, exps=rows * n_cols)
    measure(benchmark, _fwd_bwd(fn, [hidden, weight]), device=device, group=group, impl=name, ours=impl == "ours",
            work=work)
