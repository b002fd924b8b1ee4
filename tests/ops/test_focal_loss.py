"""focal_loss and linear_focal_loss against the float64 reference (SPEC 6.3, 6.5), on the PyTorch path and
on the Triton kernel (through the interpreter here, natively on CUDA)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retailsim.ops import backend, set_backend
from retailsim.ops.focal_loss import focal_loss, linear_focal_loss
from retailsim.ops.focal_loss import function as focal_function
from retailsim.ops.focal_loss import torch_path
from retailsim.ops.focal_loss.reference import (
    focal_loss_eager,
    focal_loss_reference,
    linear_focal_loss_reference,
)
from tests.tolerances import (
    FOCAL_CONFIDENT_CE_MAX,
    FOCAL_GRADCHECK_ATOL,
    FOCAL_GRADCHECK_RTOL,
    FP32_GRAD_REL_ERR,
    FP32_REL_ERR,
    assert_fp32_close,
    assert_low_precision_close,
)

# The interpreter computes every lane, masked or not: a NaN or an overflow there (numpy's RuntimeWarning) means
# a kernel exponentiates before it masks, which on a GPU hides the same garbage in discarded lanes.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

GAMMAS = (0.0, 0.5, 2.0, 5.0)
REDUCTIONS = ("mean", "sum", "none")
CONFIDENT_MARGIN = 22.0  # added to the target's logit: ce from 2e-9 to 2e-6 at seed 12


def _triton_available() -> bool:
    return backend.triton_runs_on(torch.device("cpu"))


PATHS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not _triton_available(), reason="Triton interpreter off")),
]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """The backend under test, with blocks and chunks shrunk so that the small shapes here still cover
    several vocabulary blocks (the last one partial) and several row chunks."""
    set_backend(request.param)
    if request.param == "triton":
        from retailsim.ops.focal_loss import triton as focal_triton

        monkeypatch.setattr(focal_triton, "MAX_BLOCK_V", 32)
    monkeypatch.setattr(torch_path, "CHUNK_ELEMENTS", 300)
    return request.param


def _inputs(seed, n_rows, n_cols, dtype=torch.float32, n_ignored=2, confident=0.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_rows, n_cols, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, n_cols, (n_rows,), generator=generator)
    if confident:
        logits[torch.arange(n_rows), target] += confident
    target[torch.randperm(n_rows, generator=generator)[:n_ignored]] = -100
    alpha = torch.rand(n_cols, generator=generator, dtype=torch.float64) + 0.25
    return logits.to(dtype), target, alpha


def _grad_output(seed, loss):
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.rand(loss.shape, generator=generator, dtype=torch.float64).to(loss.dtype) + 0.5


def _check_focal(logits, target, bound=FP32_REL_ERR, seed=0, **kwargs):
    """Loss and logits gradient against the float64 reference; returns (loss, grad) for further checks."""
    ours_in = logits.detach().clone().requires_grad_()
    ref_in = logits.detach().to(torch.float64).requires_grad_()
    loss = focal_loss(ours_in, target, **kwargs)
    ref_kwargs = dict(kwargs)
    if ref_kwargs.get("alpha") is not None:
        ref_kwargs["alpha"] = ref_kwargs["alpha"].to(torch.float64)
    ref = focal_loss_reference(ref_in, target, **ref_kwargs)
    grad_out = _grad_output(seed, ref)
    loss.backward(grad_out.to(loss.dtype))
    ref.backward(grad_out)
    assert_fp32_close(loss, ref, "loss", bound)
    assert_fp32_close(ours_in.grad, ref_in.grad, "grad logits", max(bound, FP32_GRAD_REL_ERR * (bound > FP32_REL_ERR)))
    return loss, ours_in.grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_alpha", [False, True], ids=["no_alpha", "alpha"])
@pytest.mark.parametrize("gamma", GAMMAS, ids=lambda g: f"gamma{g}")
def test_focal_loss_matches_float64_reference(path, gamma, with_alpha, reduction):
    # V = 75 is several vocabulary blocks on the Triton path (MAX_BLOCK_V = 32), the last one partly masked.
    logits, target, alpha = _inputs(seed=11, n_rows=9, n_cols=75)
    _check_focal(logits, target, gamma=gamma, alpha=alpha.float() if with_alpha else None, reduction=reduction)


def test_focal_loss_nan_logit_makes_its_row_nan(path):
    """A NaN logit off the target, first in its lane's chunk or later, is not skipped by the running max."""
    logits, target, _ = _inputs(seed=14, n_rows=4, n_cols=75, n_ignored=0)
    target[:] = torch.tensor([5, 6, 7, 8])
    logits[0, 0] = logits[1, 70] = logits[3, 8] = float("nan")   # row 3: at its target
    rows = focal_loss(logits, target, reduction="none")
    assert torch.isnan(rows[[0, 1, 3]]).all() and torch.isfinite(rows[2]), rows
    assert torch.isnan(focal_loss(logits, target))


def test_focal_loss_backward_reads_an_expanded_grad_output(path):
    """loss.sum() of reduction "none" hands the backward a stride-0 (N,) grad_output; the backward kernel reads
    it per row, and a scalar loss's grad_output (a () tensor) scales every row."""
    logits, target, alpha = _inputs(seed=13, n_rows=9, n_cols=75)
    for reduction, reduce in (("none", lambda l: 3.0 * l.sum()), ("mean", lambda l: -2.0 * l)):
        ours, ref = logits.clone().requires_grad_(), logits.to(torch.float64).requires_grad_()
        reduce(focal_loss(ours, target, alpha=alpha.float(), reduction=reduction)).backward()
        reduce(focal_loss_reference(ref, target, alpha=alpha, reduction=reduction)).backward()
        assert_fp32_close(ours.grad, ref.grad, f"grad logits ({reduction})", FP32_REL_ERR)


@pytest.mark.parametrize("gamma", (0.5, 2.0), ids=lambda g: f"gamma{g}")
def test_focal_loss_confident_logits(path, gamma):
    # p_y -> 1: ce ~ 1e-6, where 1 - exp(-ce) keeps ~1 digit and expm1 all of them.
    logits, target, _ = _inputs(seed=12, n_rows=8, n_cols=75, n_ignored=1, confident=CONFIDENT_MARGIN)
    # The case is hard by construction, judged in float64 on the inputs alone (not by how some platform's
    # libm rounds a naive formula): every kept row has ce <= FOCAL_CONFIDENT_CE_MAX, where fp32's 1 - exp(-ce)
    # cancels all but log10(ce / eps32) ~ 2 of its digits.
    kept = target != -100
    ce = torch.nn.functional.cross_entropy(logits.double()[kept], target[kept], reduction="none")
    assert float(ce.max()) <= FOCAL_CONFIDENT_CE_MAX, "confident case is not hard"
    _check_focal(logits, target, gamma=gamma)


def test_focal_loss_all_rows_ignored(path):
    logits, target, _ = _inputs(seed=13, n_rows=5, n_cols=40)
    target[:] = -100
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_()
        loss = focal_loss(x, target, reduction=reduction)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and (loss == 0).all(), reduction
        assert (x.grad == 0).all(), reduction


def test_focal_loss_single_row_and_custom_ignore_index(path):
    logits, target, alpha = _inputs(seed=14, n_rows=1, n_cols=75, n_ignored=0)
    _check_focal(logits, target, gamma=2.0, alpha=alpha.float())
    logits, target, _ = _inputs(seed=15, n_rows=6, n_cols=50, n_ignored=0)
    target[1] = 7
    _check_focal(logits, target, gamma=2.0, ignore_index=7)


def test_focal_loss_leading_dims_and_float64(path):
    logits, target, alpha = _inputs(seed=16, n_rows=12, n_cols=33, dtype=torch.float64)
    loss, grad = _check_focal(logits.reshape(3, 4, 33), target.reshape(3, 4), gamma=2.0, reduction="none")
    assert loss.shape == (3, 4) and grad.shape == (3, 4, 33) and loss.dtype == torch.float64


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gamma_zero_equals_cross_entropy(path, reduction):
    logits, target, _ = _inputs(seed=17, n_rows=10, n_cols=75)
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    ours = focal_loss(x1, target, gamma=0.0, reduction=reduction)
    theirs = F.cross_entropy(x2, target, reduction=reduction)
    ours.sum().backward()
    theirs.sum().backward()
    assert_fp32_close(ours, theirs, "loss vs cross_entropy")
    assert_fp32_close(x1.grad, x2.grad, "grad vs cross_entropy")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_focal_loss_low_precision(path, dtype):
    logits, target, alpha = _inputs(seed=18, n_rows=9, n_cols=75, dtype=dtype)
    x = logits.clone().requires_grad_()
    loss = focal_loss(x, target, gamma=2.0, alpha=alpha.to(dtype))
    loss.backward()
    same_in = logits.clone().requires_grad_()
    same = focal_loss_reference(same_in, target, gamma=2.0, alpha=alpha.to(dtype))
    same.backward()
    ref_in = logits.double().requires_grad_()
    ref = focal_loss_reference(ref_in, target, gamma=2.0, alpha=alpha.to(dtype).double())
    ref.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype
    assert_low_precision_close(loss, same, ref, "loss")
    assert_low_precision_close(x.grad, same_in.grad, ref_in.grad, "grad logits")


@pytest.mark.parametrize("gamma", GAMMAS, ids=lambda g: f"gamma{g}")
def test_focal_loss_gradcheck_float64(path, gamma):
    # 19 classes under the interpreter (each gradcheck evaluation is a kernel launch there), 37 otherwise.
    n_cols = 19 if path == "triton" else 37
    logits, target, alpha = _inputs(seed=19, n_rows=3, n_cols=n_cols, dtype=torch.float64, n_ignored=1)
    x = logits.clone().requires_grad_()
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda z: focal_loss(z, target, gamma=gamma, alpha=alpha, reduction=reduction),
            (x,), atol=FOCAL_GRADCHECK_ATOL, rtol=FOCAL_GRADCHECK_RTOL,
        )


def test_focal_loss_deterministic(path):
    logits, target, alpha = _inputs(seed=20, n_rows=9, n_cols=75)
    runs = []
    for _ in range(2):
        x = logits.clone().requires_grad_()
        loss = focal_loss(x, target, gamma=2.0, alpha=alpha.float())
        loss.backward()
        runs.append((loss.detach(), x.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_focal_loss_inplace_backward(path):
    logits, target, alpha = _inputs(seed=22, n_rows=9, n_cols=75)
    expected = logits.clone().requires_grad_()
    focal_loss(expected, target, alpha=alpha.float()).backward()
    x = logits.clone().requires_grad_()
    loss = focal_loss(x, target, alpha=alpha.float(), inplace_backward=True)
    assert torch.equal(x.detach(), logits), "the forward must leave the logits as they are"
    loss.backward()
    assert torch.equal(x.grad, expected.grad)
    assert torch.equal(x.detach(), expected.grad), "the gradient was not written over the logits"
    # logits that another node saved for its backward: autograd must refuse rather than use overwritten values
    source = logits.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inplace"):
        focal_loss(source.exp(), target, inplace_backward=True).backward()


def test_focal_loss_masked_out_classes(path):
    # -inf logits (classes excluded from the candidates), whole vocabulary blocks of them included.
    logits, target, _ = _inputs(seed=21, n_rows=6, n_cols=75, n_ignored=0)
    logits[:, :40] = float("-inf")
    target = torch.randint(40, 75, (6,), generator=torch.Generator().manual_seed(21))
    x = logits.clone().requires_grad_()
    loss = focal_loss(x, target)
    loss.backward()
    ref_in = logits.double().requires_grad_()
    ref = focal_loss_reference(ref_in, target)
    ref.backward()
    assert_fp32_close(loss, ref, "loss")
    assert (x.grad[:, :40] == 0).all()
    assert_fp32_close(x.grad[:, 40:], ref_in.grad[:, 40:], "grad logits")


# ---------------------------------------------------------------------------------------- linear_focal_loss
def _linear_inputs(seed, n_rows, hidden_size, n_cols, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, hidden_size, generator=generator, dtype=torch.float64)
    weight = torch.randn(n_cols, hidden_size, generator=generator, dtype=torch.float64) / hidden_size**0.5
    bias = torch.randn(n_cols, generator=generator, dtype=torch.float64) * 0.1
    target = torch.randint(0, n_cols, (n_rows,), generator=generator)
    target[torch.randperm(n_rows, generator=generator)[:2]] = -100
    alpha = torch.rand(n_cols, generator=generator, dtype=torch.float64) + 0.25
    return hidden.to(dtype), weight.to(dtype), bias.to(dtype), target, alpha


@pytest.fixture
def small_linear_chunks(monkeypatch):
    """Logit chunks of 3 rows at V = 75 fp32 (900 bytes), so the row loop runs several times, and V padded to
    80 for the matmuls as on CUDA."""
    monkeypatch.setattr(focal_function, "LOGITS_CHUNK_BYTES", 960)
    monkeypatch.setattr(focal_function, "PAD_OFF_CUDA", True)


def _check_linear(hidden, weight, bias, target, alpha, bound=FP32_REL_ERR, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight)]
    leaves.append(None if bias is None else bias.detach().clone().requires_grad_())
    refs = [None if t is None else t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    loss = linear_focal_loss(leaves[0], leaves[1], target, bias=leaves[2], alpha=alpha, **kwargs)
    ref = linear_focal_loss_reference(
        refs[0], refs[1], target, bias=refs[2], alpha=None if alpha is None else alpha.double(), **kwargs
    )
    grad_out = _grad_output(3, ref)
    loss.backward(grad_out.to(loss.dtype))
    ref.backward(grad_out)
    assert_fp32_close(loss, ref, "loss", bound)
    for name, ours, theirs in zip(("hidden", "weight", "bias"), leaves, refs):
        if ours is not None:
            assert_fp32_close(ours.grad, theirs.grad, f"grad {name}", max(bound, FP32_GRAD_REL_ERR))
    return loss, leaves


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("gamma", (0.0, 2.0), ids=lambda g: f"gamma{g}")
def test_linear_focal_loss_matches_float64_reference(path, small_linear_chunks, gamma, with_bias, reduction):
    hidden, weight, bias, target, alpha = _linear_inputs(seed=31, n_rows=10, hidden_size=24, n_cols=75)
    _check_linear(hidden, weight, bias if with_bias else None, target, alpha.float(), gamma=gamma,
                  reduction=reduction)


def test_linear_focal_loss_gradcheck_float64(path, small_linear_chunks):
    hidden, weight, bias, target, alpha = _linear_inputs(seed=32, n_rows=5, hidden_size=6, n_cols=37,
                                                         dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (hidden, weight, bias))
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda h, w, b: linear_focal_loss(h, w, target, bias=b, gamma=0.5, alpha=alpha, reduction=reduction),
            inputs, atol=FOCAL_GRADCHECK_ATOL, rtol=FOCAL_GRADCHECK_RTOL,
        )


def test_linear_focal_loss_low_precision_several_chunks(path, monkeypatch):
    monkeypatch.setattr(focal_function, "LOGITS_CHUNK_BYTES", 480)  # 3 rows of bf16 at V = 75 (80 padded)
    hidden, weight, bias, target, _ = _linear_inputs(seed=33, n_rows=10, hidden_size=24, n_cols=75,
                                                     dtype=torch.bfloat16)
    ours = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    same = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    refs = [t.double().requires_grad_() for t in (hidden, weight, bias)]
    linear_focal_loss(*ours[:2], target, bias=ours[2]).backward()
    linear_focal_loss_reference(*same[:2], target, bias=same[2]).backward()
    linear_focal_loss_reference(*refs[:2], target, bias=refs[2]).backward()
    for name, a, b, r in zip(("hidden", "weight", "bias"), ours, same, refs):
        assert a.grad.dtype == torch.bfloat16
        assert_low_precision_close(a.grad, b.grad, r.grad, f"grad {name}")


def test_linear_focal_loss_deterministic_and_no_grad(path, small_linear_chunks):
    hidden, weight, bias, target, _ = _linear_inputs(seed=34, n_rows=10, hidden_size=24, n_cols=75)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        loss = linear_focal_loss(leaves[0], leaves[1], target, bias=leaves[2])
        loss.backward()
        runs.append([loss.detach()] + [t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    with torch.no_grad():
        assert torch.equal(linear_focal_loss(hidden, weight, target, bias=bias), runs[0][0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_rows_at_all(path, reduction):
    logits = torch.randn(0, 30, requires_grad=True)
    hidden, weight = torch.randn(0, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    for loss in (focal_loss(logits, target, reduction=reduction),
                 linear_focal_loss(hidden, weight, target, reduction=reduction)):
        assert torch.isfinite(loss).all() and loss.sum().item() == 0
        loss.sum().backward()
    assert logits.grad.shape == (0, 30) and hidden.grad.shape == (0, 8) and (weight.grad == 0).all()


def test_linear_focal_loss_all_rows_ignored(path):
    hidden, weight, _, target, _ = _linear_inputs(seed=35, n_rows=4, hidden_size=8, n_cols=20)
    target[:] = -100
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_focal_loss(h, w, target)
    loss.backward()
    assert loss.item() == 0 and (h.grad == 0).all() and (w.grad == 0).all()


# ------------------------------------------------------------------------------------------------ compile
def test_focal_losses_under_torch_compile():
    set_backend("torch")
    logits, target, alpha = _inputs(seed=40, n_rows=9, n_cols=75)
    hidden, weight, bias, ltarget, _ = _linear_inputs(seed=41, n_rows=10, hidden_size=24, n_cols=75)

    def step(x, h, w, b):
        return focal_loss(x, target, gamma=2.0, alpha=alpha.float()) + linear_focal_loss(h, w, ltarget, bias=b)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (logits, hidden, weight, bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert_fp32_close(a, b, "compiled vs eager")


# ------------------------------------------------------------------------------------------------- errors
def test_user_errors_name_the_argument():
    logits, target, alpha = _inputs(seed=50, n_rows=4, n_cols=10)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, target, alpha=alpha[:5].float())
    with pytest.raises(ValueError, match="target"):
        focal_loss(logits, torch.full((4,), 10))
    with pytest.raises(ValueError, match="logits"):
        focal_loss(logits, target[:3])
    with pytest.raises(TypeError, match="target"):
        focal_loss(logits, target.float())
    with pytest.raises(ValueError, match="weight"):
        linear_focal_loss(logits, torch.randn(5, 3), target)


# ----------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_focal_loss_cuda_parity_large_vocabulary(gamma):
    torch.backends.cuda.matmul.allow_tf32 = False
    logits, target, alpha = _inputs(seed=60, n_rows=64, n_cols=131_072 + 5, confident=0.0)
    _check_focal(logits.cuda(), target.cuda(), gamma=gamma, alpha=alpha.float().cuda())
    logits, target, _ = _inputs(seed=61, n_rows=64, n_cols=5003, confident=CONFIDENT_MARGIN)
    _check_focal(logits.cuda(), target.cuda(), gamma=gamma)


@pytest.mark.cuda
def test_linear_focal_loss_cuda_parity_and_low_precision():
    torch.backends.cuda.matmul.allow_tf32 = False
    hidden, weight, bias, target, alpha = _linear_inputs(seed=62, n_rows=300, hidden_size=512, n_cols=131_072)
    cuda = [t.cuda() for t in (hidden, weight, bias, target, alpha.float())]
    _check_linear(*cuda, gamma=2.0)  # several chunks at V = 131072
    hidden, weight, bias, target, _ = _linear_inputs(seed=63, n_rows=2048, hidden_size=512, n_cols=5003,
                                                     dtype=torch.bfloat16)
    ours = [t.cuda().requires_grad_() for t in (hidden, weight, bias)]
    same = [t.cuda().requires_grad_() for t in (hidden, weight, bias)]
    refs = [t.cuda().double().requires_grad_() for t in (hidden, weight, bias)]
    target = target.cuda()
    linear_focal_loss(*ours[:2], target, bias=ours[2]).backward()
    focal_loss_eager(F.linear(*same[:2], same[2]), target).backward()
    linear_focal_loss_reference(*refs[:2], target, bias=refs[2]).backward()
    for name, a, b, r in zip(("hidden", "weight", "bias"), ours, same, refs):
        assert_low_precision_close(a.grad, b.grad, r.grad, f"bf16 grad {name}")


@pytest.mark.cuda
def test_linear_focal_loss_cuda_memory_at_131072_products():
    # 8192 rows x 131072 products in bf16: the logits alone would be 2 GiB; ours stays in a few hundred MB.
    generator = torch.Generator(device="cuda").manual_seed(64)
    hidden = torch.randn(8192, 512, device="cuda", dtype=torch.bfloat16, generator=generator).requires_grad_()
    weight = (torch.randn(131_072, 512, device="cuda", dtype=torch.bfloat16, generator=generator) / 23)
    weight.requires_grad_()
    target = torch.randint(0, 131_072, (8192,), device="cuda", generator=generator)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    linear_focal_loss(hidden, weight, target).backward()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    assert torch.isfinite(weight.grad).all() and torch.isfinite(hidden.grad).all()
    assert peak_mb < 700, f"peak {peak_mb:.0f} MB"
