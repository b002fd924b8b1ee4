"""contrastive_loss (SPEC 6.4): both paths (chunked PyTorch; Triton, on CPU through the interpreter) against
the float64 full-matrix reference, gradients included; exclusion semantics checked against a loop written
straight from the formula; float64 gradcheck; determinism; input errors. CUDA cases carry the cuda marker."""
from __future__ import annotations

import math

import pytest
import torch

from retailsim.ops import backend, contrastive_loss
from retailsim.ops.contrastive_loss import chunked
from retailsim.ops.contrastive_loss.reference import contrastive_loss_ref
from tests.tolerances import (
    CONTRASTIVE_GRADCHECK_ATOL,
    CONTRASTIVE_GRADCHECK_RTOL,
    FP32_GRAD_REL_ERR,
    FP32_REL_ERR,
    assert_fp32_close,
    assert_low_precision_close,
)

# The interpreter computes every lane, masked or not: a NaN or an overflow there (numpy's RuntimeWarning) means
# a kernel exponentiates before it masks, which on a GPU hides the same garbage in discarded lanes.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

TRITON = ("triton",)
BACKENDS = ("torch", *TRITON)


def use_backend(name: str, device: torch.device) -> None:
    """``torch`` or ``triton``."""
    if name == "triton" and not backend.triton_runs_on(device):
        pytest.skip("Triton cannot run on these tensors here (CPU needs TRITON_INTERPRET=1 and Triton)")
    backend.set_backend(name)


def make_problem(n, m, d, seed, *, dtype=torch.float64, device="cpu", groups=5, labels=9, ignored=0.2):
    """Random anchors/candidates (never zeros), groups, duplicated labels and ~``ignored`` of positives -1."""
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=gen, dtype=torch.float64)
    candidates = torch.randn(m, d, generator=gen, dtype=torch.float64)
    positive = torch.randint(0, m, (n,), generator=gen)
    positive[torch.rand(n, generator=gen) < ignored] = -1
    anchor_group = torch.randint(0, groups, (n,), generator=gen)
    candidate_group = torch.randint(0, groups, (m,), generator=gen)
    candidate_label = torch.randint(0, labels, (m,), generator=gen)
    tensors = dict(anchors=anchors.to(dtype), candidates=candidates.to(dtype))
    ids = dict(positive_index=positive, anchor_group=anchor_group, candidate_group=candidate_group,
               candidate_label=candidate_label)
    return ({k: v.to(device).requires_grad_() for k, v in tensors.items()},
            {k: v.to(device) for k, v in ids.items()}, gen)


def loss_and_grads(fn, floats, ids, upstream, **kwargs):
    loss = fn(floats["anchors"], floats["candidates"], **ids, **kwargs)
    grads = torch.autograd.grad((loss.to(upstream.dtype) * upstream).sum(), (floats["anchors"], floats["candidates"]))
    return loss, grads


def as64(floats):
    return {k: v.detach().to(torch.float64).cpu().requires_grad_() for k, v in floats.items()}


def upstream_for(reduction, n, gen, dtype=torch.float64, device="cpu"):
    shape = (n,) if reduction == "none" else ()
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype=dtype, device=device)


def check_fp32_parity(floats, ids, gen, reduction="mean", **kwargs):
    n = floats["anchors"].shape[0]
    upstream = upstream_for(reduction, n, gen)
    cpu_ids = {k: None if v is None else v.cpu() for k, v in ids.items()}
    ref, ref_grads = loss_and_grads(contrastive_loss_ref, as64(floats), cpu_ids, upstream, reduction=reduction,
                                    **kwargs)
    out, grads = loss_and_grads(contrastive_loss, floats, ids, upstream.to(floats["anchors"].device),
                                reduction=reduction, **kwargs)
    assert out.dtype == floats["anchors"].dtype and out.shape == ref.shape
    assert_fp32_close(out, ref, "loss")
    assert_fp32_close(grads[0], ref_grads[0], "anchor gradient", FP32_GRAD_REL_ERR)
    assert_fp32_close(grads[1], ref_grads[1], "candidate gradient", FP32_GRAD_REL_ERR)


# ------------------------------------------------------------------------------------------- the reference


def test_reference_matches_the_formula_written_as_loops():
    floats, ids, _ = make_problem(7, 9, 5, seed=0, groups=3, labels=4)
    a = torch.nn.functional.normalize(floats["anchors"].detach(), dim=1)
    c = torch.nn.functional.normalize(floats["candidates"].detach(), dim=1)
    p, ga, gc, lc = (ids[k].tolist() for k in ("positive_index", "anchor_group", "candidate_group",
                                               "candidate_label"))
    expected = []
    for i in range(7):
        if p[i] < 0:
            expected.append(0.0)
            continue
        s = [(a[i] @ c[j]).item() / 0.07 for j in range(9)]
        allowed = [j for j in range(9) if j == p[i] or (gc[j] != ga[i] and lc[j] != lc[p[i]])]
        expected.append(-s[p[i]] + math.log(sum(math.exp(s[j]) for j in allowed)))
    got = contrastive_loss_ref(floats["anchors"], floats["candidates"], **ids, reduction="none")
    torch.testing.assert_close(got.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- parity, both backends


@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fp32_matches_float64_reference(backend_name, labels, reduction, normalize):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(37, 53, 40, seed=1, dtype=torch.float32)
    if not labels:
        ids["candidate_label"] = None
    temperature = 0.07 if normalize else 2.0  # raw dot products of 40-dim Gaussians need a softer scale
    check_fp32_parity(floats, ids, gen, reduction=reduction, normalize=normalize, temperature=temperature)


@pytest.mark.parametrize("shape", [(1, 1, 16), (1, 70, 17), (65, 33, 7), (129, 257, 24)],
                         ids=lambda s: "N{}-M{}-D{}".format(*s))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_odd_sizes(backend_name, shape):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(*shape, seed=2, dtype=torch.float32, ignored=0.1 if shape[0] > 1 else 0.0)
    check_fp32_parity(floats, ids, gen, reduction="mean")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_confident_scores_no_worse_than_fp32_pytorch(backend_name):
    """Anchors close to their positives at a small temperature: scores up to 1/τ = 50 and most rows near-certain.
    fp32 cannot resolve loss_i = LSE_i - s_ip (both ~50) to 1e-5 relative, nor can eager PyTorch: the bar is
    the same as for low precision, no worse than twice the fp32 PyTorch reference's error."""
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(40, 48, 32, seed=3, dtype=torch.float32, ignored=0.0)
    with torch.no_grad():
        floats["anchors"].copy_(floats["candidates"][ids["positive_index"]] + 1.0 * floats["anchors"])
    upstream = upstream_for("sum", 40, gen)
    kwargs = dict(reduction="sum", temperature=0.02)
    ref64, ref64_grads = loss_and_grads(contrastive_loss_ref, as64(floats), ids, upstream, **kwargs)
    same, same_grads = loss_and_grads(contrastive_loss_ref, floats, ids, upstream.float(), **kwargs)
    out, grads = loss_and_grads(contrastive_loss, floats, ids, upstream.float(), **kwargs)
    assert 1e-3 < ref64.item() / 40 < 1.0, "the case should be confident but not degenerate"
    assert_low_precision_close(out, same, ref64, "loss")
    assert_low_precision_close(grads[0], same_grads[0], ref64_grads[0], "anchor gradient")
    assert_low_precision_close(grads[1], same_grads[1], ref64_grads[1], "candidate gradient")


@pytest.mark.parametrize("backend_name", TRITON)
def test_triton_splits_and_d_chunks_match(backend_name):
    """The split of the candidate/anchor loops (partials merged by torch) and the chunking of D."""
    from retailsim.ops.contrastive_loss.triton import config_override

    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(50, 100, 40, seed=4, dtype=torch.float32)
    with config_override(splits=3, BLOCK_D=16):  # 3 splits of the loops, 3 chunks of D = 40
        check_fp32_parity(floats, ids, gen, reduction="none")


@pytest.mark.parametrize("backend_name", TRITON)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_splits_merge_in_the_loss_and_gradient_kernels(backend_name, reduction, normalize):
    """Three splits of both loops: the loss kernel merges the forward's (m, l, s_ip) and weighs each split's O,
    the gradient kernel sums the candidate partials; with a scalar upstream gradient read inside the kernels."""
    from retailsim.ops.contrastive_loss.triton import config_override

    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(40, 90, 24, seed=14, dtype=torch.float32)
    with config_override(splits=3):
        check_fp32_parity(floats, ids, gen, reduction=reduction, normalize=normalize)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_strided_inputs(backend_name):
    """Anchors as a column slice of a wider tensor (row stride 2D) and candidates transposed (column stride)."""
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(21, 33, 12, seed=15, dtype=torch.float32)
    wide = torch.cat([floats["anchors"].detach(), torch.randn(21, 12, generator=gen)], dim=1)
    anchors = wide[:, :12].requires_grad_()
    candidates = floats["candidates"].detach().t().contiguous().t().requires_grad_()
    assert anchors.stride() == (24, 1) and candidates.stride() == (1, 33)
    check_fp32_parity({"anchors": anchors, "candidates": candidates}, ids, gen, reduction="none")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_per_row_upstream_gradient_with_stride_zero(backend_name):
    """reduction="none" with an expanded (stride 0) upstream gradient, as ``loss.backward(g.expand(N))`` gives."""
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, _ = make_problem(17, 25, 8, seed=16, dtype=torch.float64)
    upstream = torch.full((1,), 0.7, dtype=torch.float64).expand(17)
    out = contrastive_loss(floats["anchors"], floats["candidates"], **ids, reduction="none")
    grads = torch.autograd.grad(out, (floats["anchors"], floats["candidates"]), upstream)
    ref = contrastive_loss_ref(floats["anchors"], floats["candidates"], **ids, reduction="sum") * 0.7
    ref_grads = torch.autograd.grad(ref, (floats["anchors"], floats["candidates"]))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_triton_kernels_turn_an_out_of_range_positive_into_nan():
    """On a GPU the index check costs no host sync: the loss kernel makes that anchor's loss NaN (the CPU
    entry point raises before the kernels run, so the launcher is called directly here)."""
    if not backend.triton_runs_on(torch.device("cpu")):
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    from retailsim.ops.contrastive_loss import triton as launchers
    from retailsim.ops.contrastive_loss.function import CandidateIndex

    floats, ids, _ = make_problem(6, 10, 16, seed=17, dtype=torch.float32, ignored=0.0)
    positive = ids["positive_index"].clone()
    positive[2], positive[4] = 10, -3
    index = CandidateIndex(positive, ids["anchor_group"], ids["candidate_group"], ids["candidate_label"])
    for reduction in ("none", "mean"):
        loss, _ = launchers.forward(anchors=floats["anchors"].detach(), candidates=floats["candidates"].detach(),
                                    index=index, scale=1 / 0.07, normalize=True, reduction=reduction,
                                    want_anchor_grad=False, want_candidate_grad=False)
        if reduction == "none":
            assert torch.isnan(loss[[2, 4]]).all() and torch.isfinite(loss[[0, 1, 3, 5]]).all()
        else:
            assert torch.isnan(loss)


def test_torch_path_many_chunks_matches(monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 100)  # 100 // 61 = 1 anchor per chunk
    use_backend("torch", torch.device("cpu"))
    floats, ids, gen = make_problem(23, 61, 12, seed=5, dtype=torch.float32)
    for reduction in ("mean", "none"):
        check_fp32_parity(floats, ids, gen, reduction=reduction)


# ----------------------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_all_anchors_ignored_gives_zero_not_nan(backend_name):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, _ = make_problem(20, 30, 16, seed=6, dtype=torch.float32, ignored=1.0)
    for reduction in ("mean", "sum", "none"):
        loss = contrastive_loss(floats["anchors"], floats["candidates"], **ids, reduction=reduction)
        grads = torch.autograd.grad(loss.sum(), (floats["anchors"], floats["candidates"]))
        assert torch.equal(loss, torch.zeros_like(loss)), reduction
        for grad in grads:
            assert torch.equal(grad, torch.zeros_like(grad)), reduction


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_group_covering_every_candidate_but_the_positive(backend_name):
    """Every candidate shares the anchor's group: only the positive is left, so loss_i = 0 and no gradient."""
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(24, 35, 20, seed=7, dtype=torch.float32, ignored=0.25)
    ids["anchor_group"].fill_(4)
    ids["candidate_group"].fill_(4)
    loss = contrastive_loss(floats["anchors"], floats["candidates"], **ids, reduction="none")
    grads = torch.autograd.grad(loss.sum(), (floats["anchors"], floats["candidates"]))
    assert loss.abs().max().item() <= FP32_REL_ERR
    assert max(g.abs().max().item() for g in grads) <= FP32_REL_ERR
    check_fp32_parity(floats, ids, gen, reduction="mean")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_labels_exclude_other_copies_of_the_positive(backend_name):
    """One anchor, three candidates: positive 0, candidate 1 a copy of the same product, candidate 2 another
    product. With labels only candidate 2 is a negative; without, both are."""
    use_backend(backend_name, torch.device("cpu"))
    gen = torch.Generator().manual_seed(8)
    anchors = torch.randn(1, 16, generator=gen)
    candidates = torch.randn(3, 16, generator=gen)
    ids = dict(positive_index=torch.tensor([0]), anchor_group=torch.tensor([0]),
               candidate_group=torch.tensor([1, 2, 3]))
    s = torch.nn.functional.normalize(anchors, dim=1) @ torch.nn.functional.normalize(candidates, dim=1).T / 0.5
    with_labels = contrastive_loss(anchors, candidates, **ids, candidate_label=torch.tensor([7, 7, 8]),
                                   temperature=0.5)
    without = contrastive_loss(anchors, candidates, **ids, temperature=0.5)
    torch.testing.assert_close(with_labels, torch.logsumexp(s[0, [0, 2]], 0) - s[0, 0])
    torch.testing.assert_close(without, torch.logsumexp(s[0], 0) - s[0, 0])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_forward_without_grad_and_single_input_grads(backend_name):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(30, 41, 24, seed=9, dtype=torch.float32)
    reference = contrastive_loss_ref(*as64(floats).values(), **ids)
    with torch.no_grad():
        assert_fp32_close(contrastive_loss(floats["anchors"], floats["candidates"], **ids), reference, "no-grad loss")
    for needs in ("anchors", "candidates"):
        inputs = {k: v.detach().requires_grad_(k == needs) for k, v in floats.items()}
        loss = contrastive_loss(inputs["anchors"], inputs["candidates"], **ids)
        (grad,) = torch.autograd.grad(loss, inputs[needs])
        ref64 = as64(floats)
        (ref_grad,) = torch.autograd.grad(contrastive_loss_ref(ref64["anchors"], ref64["candidates"], **ids),
                                          ref64[needs])
        assert_fp32_close(grad, ref_grad, f"{needs} gradient alone", FP32_GRAD_REL_ERR)


def test_empty_anchor_set():
    floats, ids, _ = make_problem(0, 5, 16, seed=10, dtype=torch.float32)
    for name in BACKENDS:
        if name.startswith("triton") and not backend.triton_runs_on(torch.device("cpu")):
            continue
        use_backend(name, torch.device("cpu"))
        loss = contrastive_loss(floats["anchors"], floats["candidates"], **ids)
        (grad,) = torch.autograd.grad(loss, floats["candidates"])
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


# ------------------------------------------------------------------------------------------ low precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_low_precision_no_worse_than_twice_pytorch(backend_name, dtype):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, gen = make_problem(70, 90, 40, seed=11, dtype=dtype)
    upstream = upstream_for("mean", 70, gen)
    ref64, ref64_grads = loss_and_grads(contrastive_loss_ref, as64(floats), ids, upstream)
    same, same_grads = loss_and_grads(contrastive_loss_ref, floats, ids, upstream.to(dtype))
    out, grads = loss_and_grads(contrastive_loss, floats, ids, upstream.to(dtype))
    assert out.dtype == dtype and grads[0].dtype == dtype
    assert_low_precision_close(out, same, ref64, "loss")
    assert_low_precision_close(grads[0], same_grads[0], ref64_grads[0], "anchor gradient")
    assert_low_precision_close(grads[1], same_grads[1], ref64_grads[1], "candidate gradient")


# ----------------------------------------------------------------------------- gradcheck and determinism


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_float64_gradcheck(backend_name, reduction):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, _ = make_problem(9, 11, 5, seed=12, groups=3, labels=5)
    anchors, candidates = floats["anchors"], floats["candidates"]
    assert torch.autograd.gradcheck(
        lambda a, c: contrastive_loss(a, c, **ids, temperature=0.5, reduction=reduction),
        (anchors, candidates), atol=CONTRASTIVE_GRADCHECK_ATOL, rtol=CONTRASTIVE_GRADCHECK_RTOL)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_deterministic_bits(backend_name):
    use_backend(backend_name, torch.device("cpu"))
    floats, ids, _ = make_problem(50, 70, 24, seed=13, dtype=torch.float32)

    def run():
        loss = contrastive_loss(floats["anchors"], floats["candidates"], **ids, reduction="none")
        return (loss, *torch.autograd.grad(loss.sum(), (floats["anchors"], floats["candidates"])))

    if backend_name.startswith("triton"):
        from retailsim.ops.contrastive_loss.triton import config_override

        with config_override(splits=2):
            first, second = run(), run()
    else:
        first, second = run(), run()
    for x, y in zip(first, second):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------------------------- errors


def test_input_errors_name_the_argument():
    floats, ids, _ = make_problem(4, 6, 8, seed=14, dtype=torch.float32)
    a, c = floats["anchors"], floats["candidates"]
    cases = [
        (dict(anchors=a[0]), ValueError, "anchors must be a 2-D tensor"),
        (dict(candidates=c[:, :5]), ValueError, "feature size"),
        (dict(candidates=c.double()), ValueError, "candidates must have anchors' dtype"),
        (dict(anchors=a.int(), candidates=c.int()), TypeError, "anchors must be float32"),
        (dict(positive_index=ids["positive_index"].float()), TypeError, "positive_index must be an integer"),
        (dict(positive_index=torch.tensor([0, 1, 6, 0])), ValueError, r"positive_index values must lie in \[-1, M\)"),
        (dict(positive_index=torch.tensor([0, -2, 1, 0])), ValueError, "positive_index values"),
        (dict(anchor_group=ids["anchor_group"][:3]), ValueError, r"anchor_group must have shape \(N,\)"),
        (dict(candidate_group=ids["candidate_group"][:, None]), ValueError, "candidate_group must have shape"),
        (dict(candidate_label=ids["candidate_label"][:2]), ValueError, "candidate_label must have shape"),
        (dict(candidates=c[:0]), ValueError, "candidates must have at least one row"),
        (dict(temperature=0.0), ValueError, "temperature must be a positive number"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
    ]
    for change, error, message in cases:
        args = dict(anchors=a, candidates=c, **ids)
        args.update(change)
        with pytest.raises(error, match=message):
            contrastive_loss(**args)


# ------------------------------------------------------------------------------------------------- CUDA

CUDA = torch.device("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "no-labels"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend_name", TRITON)
def test_cuda_fp32_matches_float64_reference(backend_name, labels, reduction):
    use_backend(backend_name, CUDA)
    floats, ids, gen = make_problem(1000, 1500, 200, seed=20, dtype=torch.float32, device="cuda", groups=300,
                                    labels=700)
    if not labels:
        ids["candidate_label"] = None
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # IEEE fp32 products: the parity path
    try:
        check_fp32_parity(floats, ids, gen, reduction=reduction)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend_name", TRITON)
def test_cuda_low_precision_spec_shape(backend_name, dtype):
    use_backend(backend_name, CUDA)
    floats, ids, gen = make_problem(4096, 4096, 512, seed=21, dtype=dtype, device="cuda", groups=256,
                                    labels=3000)
    upstream = upstream_for("mean", 4096, gen, device="cuda")
    cuda_ids = ids
    ref64, ref64_grads = loss_and_grads(contrastive_loss_ref, {k: v.detach().double().requires_grad_()
                                                               for k, v in floats.items()}, cuda_ids, upstream)
    same, same_grads = loss_and_grads(contrastive_loss_ref, floats, cuda_ids, upstream.to(dtype))
    out, grads = loss_and_grads(contrastive_loss, floats, cuda_ids, upstream.to(dtype))
    assert_low_precision_close(out, same, ref64, "loss")
    assert_low_precision_close(grads[0], same_grads[0], ref64_grads[0], "anchor gradient")
    assert_low_precision_close(grads[1], same_grads[1], ref64_grads[1], "candidate gradient")


@pytest.mark.cuda
@pytest.mark.parametrize("backend_name", TRITON)
def test_cuda_float64_gradcheck(backend_name):
    use_backend(backend_name, CUDA)
    floats, ids, _ = make_problem(20, 40, 24, seed=22, device="cuda", groups=4, labels=10)
    assert torch.autograd.gradcheck(
        lambda a, c: contrastive_loss(a, c, **ids, temperature=0.5, reduction="none"),
        (floats["anchors"], floats["candidates"]), atol=CONTRASTIVE_GRADCHECK_ATOL,
        rtol=CONTRASTIVE_GRADCHECK_RTOL)


@pytest.mark.cuda
@pytest.mark.parametrize("backend_name", TRITON)
def test_cuda_deterministic_and_no_score_matrix(backend_name):
    """Two runs give identical bits, and fwd+bwd at N = M = 8192 needs less extra memory than one bf16 N x M
    score matrix (128 MiB; everything we keep is O((N + M) D)), so none is materialised."""
    use_backend(backend_name, CUDA)
    n = m = 8192
    floats, ids, _ = make_problem(n, m, 128, seed=23, dtype=torch.bfloat16, device="cuda", groups=512,
                                  labels=6000)

    def run():
        loss = contrastive_loss(floats["anchors"], floats["candidates"], **ids)
        return (loss, *torch.autograd.grad(loss, (floats["anchors"], floats["candidates"])))

    first = run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    second = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert peak < n * m * 2, f"peak extra memory {peak / 2**20:.1f} MiB >= one bf16 N x M matrix"
