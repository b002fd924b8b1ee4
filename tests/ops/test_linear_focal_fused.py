"""linear_focal_loss on the Triton backend, which runs it on the contrastive loss's kernels (no logits buffer):
the paths test_focal_loss.py does not reach, against the float64 reference (through the interpreter here).

Covered here: forward and candidate splits (their partials merged, the bias gradient's too), several row and
vocabulary tiles with the last ones partial, one row, a vocabulary smaller than one tile, each gradient alone,
int32 and strided inputs, the NaN rule for an out-of-range target on the device path, and torch.compile."""
from __future__ import annotations

import pytest
import torch

from retailsim.ops import backend, set_backend
from retailsim.ops.contrastive_loss import triton as softmax_rows
from retailsim.ops.focal_loss import linear_focal_loss
from retailsim.ops.focal_loss.reference import linear_focal_loss_reference
from tests.tolerances import FP32_GRAD_REL_ERR, FP32_REL_ERR, assert_fp32_close

pytestmark = [
    pytest.mark.filterwarnings("error::RuntimeWarning"),
    pytest.mark.skipif(not backend.triton_runs_on(torch.device("cpu")), reason="Triton interpreter off"),
]


@pytest.fixture(autouse=True)
def triton_backend():
    set_backend("triton")
    yield
    set_backend(None)


def _inputs(seed, n_rows, hidden_size, n_cols, n_ignored=3):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, hidden_size, generator=generator, dtype=torch.float64)
    weight = torch.randn(n_cols, hidden_size, generator=generator, dtype=torch.float64) * (2.0 / hidden_size**0.5)
    bias = torch.randn(n_cols, generator=generator, dtype=torch.float64) * 0.3
    target = torch.randint(0, n_cols, (n_rows,), generator=generator)
    target[torch.randperm(n_rows, generator=generator)[:n_ignored]] = -100
    alpha = torch.rand(n_cols, generator=generator, dtype=torch.float64) + 0.25
    return hidden, weight, bias, target, alpha


def _compare(hidden, weight, bias, target, alpha, needs=(True, True, True), seed=0, **kwargs):
    """Loss and every asked-for gradient of the fp32 Triton path against the float64 reference."""
    ours = [None if t is None else t.detach().float().requires_grad_(need) for t, need in
            zip((hidden, weight, bias), needs)]
    refs = [None if t is None else t.detach().double().requires_grad_(need) for t, need in
            zip((hidden, weight, bias), needs)]
    loss = linear_focal_loss(ours[0], ours[1], target, bias=ours[2], alpha=None if alpha is None else alpha.float(),
                             **kwargs)
    ref = linear_focal_loss_reference(refs[0], refs[1], target, bias=refs[2], alpha=alpha, **kwargs)
    grad_out = torch.rand(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    assert_fp32_close(loss, ref, "loss", FP32_REL_ERR)
    loss.backward(grad_out.float())
    ref.backward(grad_out)
    for name, a, r, need in zip(("hidden", "weight", "bias"), ours, refs, needs):
        if a is not None and need:
            assert a.grad is not None and a.grad.dtype == torch.float32
            assert_fp32_close(a.grad, r.grad, f"grad {name}", FP32_GRAD_REL_ERR)
        elif a is not None:
            assert a.grad is None


@pytest.mark.parametrize("splits", [None, 3], ids=["one_split", "three_splits"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [0.0, 2.0], ids=lambda g: f"gamma{g}")
def test_matches_reference_across_tiles_and_splits(splits, reduction, gamma):
    # 37 rows = 3 row tiles of 16 (the last partial), V = 75 = 3 tiles of 32, H = 24: 2 K-chunks of 16.
    hidden, weight, bias, target, alpha = _inputs(seed=60, n_rows=37, hidden_size=24, n_cols=75)
    with softmax_rows.config_override(splits=splits):
        _compare(hidden, weight, bias, target, alpha, gamma=gamma, reduction=reduction, seed=1)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True)], ids=["hidden", "weight", "bias", "weight_bias"])
@pytest.mark.parametrize("splits", [None, 2], ids=["one_split", "two_splits"])
def test_each_gradient_alone(needs, splits):
    hidden, weight, bias, target, alpha = _inputs(seed=61, n_rows=20, hidden_size=24, n_cols=40)
    with softmax_rows.config_override(splits=splits):
        _compare(hidden, weight, bias, target, alpha, needs=needs, gamma=2.0, reduction="none", seed=2)


def test_one_row_and_a_vocabulary_smaller_than_a_tile():
    hidden, weight, bias, target, alpha = _inputs(seed=62, n_rows=1, hidden_size=8, n_cols=5, n_ignored=0)
    _compare(hidden, weight, bias, target, alpha, gamma=0.5, reduction="mean")
    _compare(hidden, weight, None, target, None, gamma=0.0, reduction="none")


def test_int32_targets_and_strided_inputs():
    """hidden and weight as column slices of wider tensors (row strides 40 and 30), int32 targets."""
    hidden, weight, bias, target, alpha = _inputs(seed=63, n_rows=19, hidden_size=24, n_cols=50)
    wide_hidden = torch.randn(19, 40, dtype=torch.float64)
    wide_hidden[:, 8:32] = hidden
    wide_weight = torch.randn(50, 30, dtype=torch.float64)
    wide_weight[:, 3:27] = weight
    h_leaf, w_leaf = wide_hidden.float().requires_grad_(), wide_weight.float().requires_grad_()
    h_view, w_view = h_leaf[:, 8:32], w_leaf[:, 3:27]
    assert h_view.stride(0) == 40 and w_view.stride(0) == 30
    loss = linear_focal_loss(h_view, w_view, target.int(), bias=bias.float(), alpha=alpha.float())
    ref_h, ref_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = linear_focal_loss_reference(ref_h, ref_w, target, bias=bias, alpha=alpha)
    loss.backward()
    ref.backward()
    assert_fp32_close(loss, ref, "loss")
    assert_fp32_close(h_leaf.grad[:, 8:32], ref_h.grad, "grad hidden", FP32_GRAD_REL_ERR)
    assert_fp32_close(w_leaf.grad[:, 3:27], ref_w.grad, "grad weight", FP32_GRAD_REL_ERR)
    assert (h_leaf.grad[:, :8] == 0).all() and (w_leaf.grad[:, 27:] == 0).all()


def test_out_of_range_target_gives_nan_on_the_device_path():
    """The CPU wrapper raises (test_focal_loss.py); the launcher a GPU runs turns the row's loss into NaN
    instead of reading out of bounds: a target of V, and -1 when ignore_index is -100."""
    from retailsim.ops.focal_loss import linear_triton

    hidden, weight, bias, target, alpha = _inputs(seed=64, n_rows=6, hidden_size=8, n_cols=20, n_ignored=1)
    target[1], target[4] = 20, -1
    loss, _ = linear_triton.forward(hidden=hidden.float(), weight=weight.float(), target=target, bias=bias.float(),
                                    alpha=None, gamma=2.0, ignore_index=-100, reduction="none",
                                    want_hidden_grad=True)
    bad = torch.zeros(6, dtype=torch.bool)
    bad[[1, 4]] = True
    assert torch.isnan(loss[bad]).all() and torch.isfinite(loss[~bad]).all()
    mean, _ = linear_triton.forward(hidden=hidden.float(), weight=weight.float(), target=target, bias=None,
                                    alpha=None, gamma=2.0, ignore_index=-100, reduction="mean",
                                    want_hidden_grad=False)
    assert torch.isnan(mean)


def test_compiles_without_a_graph_break():
    hidden, weight, bias, target, alpha = _inputs(seed=65, n_rows=12, hidden_size=16, n_cols=30)

    def step(h, w, b):
        rows = linear_focal_loss(h, w, target, bias=b, gamma=0.0, reduction="none")
        return linear_focal_loss(h, w, target, bias=b, alpha=alpha.float()) + (rows * torch.linspace(0, 1, 12)).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.float().requires_grad_() for t in (hidden, weight, bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert_fp32_close(a, b, "compiled vs eager")


def test_memory_beyond_inputs_and_gradients_is_a_small_fraction_of_the_logits():
    """At 8192 x 512 x 131072 bf16 (the benchmark shape) the launch plan keeps, besides inputs and gradients,
    only Saved: O (splits, N, H) fp32 and a few per-row vectors. The H100 and A100 plans take one split there
    (128 row blocks); even two would stay under an eighth of the 2 GiB of bf16 logits."""
    from retailsim.ops.focal_loss import linear_triton

    rows, hidden_size, vocab = 8192, 512, 131072
    logits_bytes = rows * vocab * 2
    for splits in (1, 2):
        with softmax_rows.config_override(splits=splits):
            shapes = linear_triton.saved_shapes(rows, vocab, hidden_size, torch.bfloat16, torch.device("cpu"), True)
        saved_bytes = sum(4 * torch.Size(shape).numel() for shape in shapes)
        assert shapes.weighted == (splits, rows, hidden_size)
        assert saved_bytes <= logits_bytes / 8, saved_bytes
