"""WorldModel on real batches of a generated cache: shapes, leakage, set semantics, cold start, history padding,
gradient checkpointing, output heads, and the Triton vs PyTorch backends."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retailsim.data import schema
from retailsim.data.batching import Batch, collate
from retailsim.model import WorldModelOutput
from retailsim.ops import set_backend
from tests.model.conftest import eval_batch, mixed_samples
from tests.tolerances import FP32_GRAD_REL_ERR, FP32_REL_ERR, assert_fp32_close


@pytest.fixture(autouse=True)
def torch_backend():
    set_backend("torch")  # the backend test switches to triton itself


def outputs_of(model, batch: Batch) -> dict[str, torch.Tensor]:
    """Every tensor the model gives for ``batch``, the product scores at the masked positions (catalogue logits
    and history votes) and the pointer scores at real history positions included."""
    with torch.no_grad():
        out = model(batch)
        rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        scores = model.slot_scores(out, batch, rows, cols)
        copy = out.copy_scores.masked_select(batch.history_valid[:, None, :])  # padding widths may differ
    return {"basket_hidden": out.basket_hidden, "context_hidden": out.context_hidden, "product_scores": scores,
            "copy_scores": copy, **{f"aux/{name}": value for name, value in out.aux_logits.items()}}


def training_loss(model, batch: Batch) -> torch.Tensor:
    """A stand-in for WorldModelLoss: cross-entropy on masked products and on the known labels."""
    out = model(batch)
    rows, cols = batch.masked_positions.nonzero(as_tuple=True)
    loss = F.cross_entropy(model.slot_scores(out, batch, rows, cols), batch.targets[rows, cols])
    for column, name in enumerate(schema.LABEL_TARGETS):
        if name in out.aux_logits:
            loss = loss + F.cross_entropy(out.aux_logits[name], batch.labels[:, column], ignore_index=0)
    return loss + 1e-3 * out.context_hidden.square().mean()


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_forward_shapes_on_a_real_batch(preset, make_model, train_arrays, data_sizes):
    batch = collate(train_arrays, np.arange(0, 200, 5), seed=1, epoch=0, train=True)
    model = make_model(preset).train()
    out = model(batch)
    b, s = batch.basket_items.shape
    d, v = model.config.d_model, data_sizes["vocab_size"]
    assert isinstance(out, WorldModelOutput)
    assert out.basket_hidden.shape == (b, s, d) and out.context_hidden.shape == (b, d)
    assert list(out.aux_logits) == list(schema.LABEL_TARGETS)
    for name, logits in out.aux_logits.items():
        assert logits.shape == (b, len(schema.LABELS[name])) and logits.dtype == torch.float32
    assert model.output_weight.shape == (v, d) and model.output_bias.shape == (v,)
    assert model.product_logits(out.basket_hidden).shape == (b, s, v)
    assert out.copy_scores.shape == (b, s, batch.history_items.shape[1])
    loss = training_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), \
        [n for n, p in model.named_parameters() if p.grad is None]


def _rewrite_masked_items(arrays, batch: Batch, samples: np.ndarray):
    """The arrays with the true product id and price at every masked position of ``batch`` replaced."""
    rows, cols = np.nonzero(batch.masked_positions.numpy())
    at = np.asarray(arrays.basket["basket_item_offsets"])[samples[rows]] + cols
    item_ids = np.array(arrays.basket["item_ids"])
    item_price = np.array(arrays.basket["item_price"])
    item_ids[at] = item_ids[at] % arrays.n_products + 1  # another real product
    item_price[at] = item_price[at] * 3 + 1
    return dataclasses.replace(arrays, basket={**arrays.basket, "item_ids": item_ids, "item_price": item_price})


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_leakage_changing_a_masked_item_in_the_raw_data_changes_no_output(preset, make_model, test_arrays):
    """Evaluation mode: the true product and price at masked positions reach no output, bit for bit."""
    samples = mixed_samples(test_arrays, 40)
    model = make_model(preset, seed=2)
    base_batch = eval_batch(test_arrays, samples)
    changed_batch = eval_batch(_rewrite_masked_items(test_arrays, base_batch, samples), samples)
    assert base_batch.masked_positions.sum() >= 40
    assert not torch.equal(base_batch.targets, changed_batch.targets)  # the rewrite reached the data
    base, changed = outputs_of(model, base_batch), outputs_of(model, changed_batch)
    for name in base:
        assert torch.equal(base[name], changed[name]), name


def test_masked_slot_input_is_the_mask_embedding_only(make_model):
    model = make_model("tiny")
    mask_id = model.config.mask_id
    ids = torch.tensor([[mask_id, 0, 1]])
    with torch.no_grad():
        model.product.product_category[mask_id] = torch.tensor(model.config.category_sizes) - 1  # a trap
        vectors = model.product(ids)
        assert torch.equal(vectors[0, 0], model.product.embedding.weight[mask_id])
        assert not vectors[0, 1].any()  # PAD
        hidden_price = model.price(torch.randn(1, 3, 3), torch.tensor([[False, True, False]]))
    assert not hidden_price[0, 0].any() and hidden_price[0, 1].any() and not hidden_price[0, 2].any()


def test_permuting_basket_slots_permutes_basket_hidden_only(make_model, train_arrays):
    batch = collate(train_arrays, mixed_samples(train_arrays), seed=5, epoch=1, train=True)
    model = make_model("small", seed=3)
    generator = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(batch.basket_items.shape[1], generator=generator)
                        for _ in range(len(batch))])                               # [B, S]
    per_slot = {"basket_items", "basket_valid", "basket_price", "price_hidden", "masked_positions", "targets"}
    permuted = Batch(**{f.name: (torch.take_along_dim(getattr(batch, f.name), perm.view(*perm.shape, *[1] * (
        getattr(batch, f.name).dim() - 2)), dim=1) if f.name in per_slot else getattr(batch, f.name))
        for f in dataclasses.fields(batch)})
    with torch.no_grad():
        a, b = model(batch), model(permuted)
    valid = permuted.basket_valid
    expected = torch.take_along_dim(a.basket_hidden, perm.unsqueeze(-1), dim=1)
    assert_fp32_close(b.basket_hidden[valid], expected[valid], "basket_hidden", bound=10 * FP32_REL_ERR)
    assert_fp32_close(b.context_hidden, a.context_hidden, "context_hidden", bound=10 * FP32_REL_ERR)
    for name in a.aux_logits:
        assert_fp32_close(b.aux_logits[name], a.aux_logits[name], name, bound=10 * FP32_REL_ERR)


def test_cold_start_and_anonymous_samples_give_finite_outputs(make_model, test_arrays):
    samples = mixed_samples(test_arrays)
    batch = eval_batch(test_arrays, samples)
    anonymous = torch.from_numpy(np.asarray(test_arrays.basket["customer_key"])[samples] == 0)
    cold = (batch.customer[:, 0] == schema.UNKNOWN_CUSTOMER_ID) | (batch.customer_stats[:, 0] == 0)
    assert anonymous.any() and (cold & ~anonymous).any() and not batch.history_valid[anonymous].any()
    for preset in ("tiny", "small"):
        for name, value in outputs_of(make_model(preset), batch).items():
            assert torch.isfinite(value).all(), name
    # a batch of anonymous samples alone: the history is all padding, the "no history" slot is what they read
    alone = eval_batch(test_arrays, samples[anonymous.numpy()])
    assert not alone.history_valid.any()
    for name, value in outputs_of(make_model("tiny"), alone).items():
        assert torch.isfinite(value).all(), name


def test_extra_history_padding_changes_nothing(make_model, test_arrays):
    """Left-aligned history with padding after: a wider pad (another batch's width) leaves every output as is."""
    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    pad = 7
    wider = dataclasses.replace(batch, **{
        name: F.pad(getattr(batch, name), (0, pad)) for name in ("history_items", "history_valid",
                                                                 "history_weeks_before")})
    model = make_model("small", seed=4)
    base, padded = outputs_of(model, batch), outputs_of(model, wider)
    for name in base:
        assert_fp32_close(padded[name], base[name], name, bound=10 * FP32_REL_ERR)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make_model, train_arrays):
    batch = collate(train_arrays, mixed_samples(train_arrays), seed=2, epoch=0, train=True)
    results = []
    for checkpointing in (False, True):
        model = make_model("tiny", seed=7, dropout=0.1, gradient_checkpointing=checkpointing).train()
        torch.manual_seed(11)  # the same dropout masks; checkpoint replays the RNG state on recomputation
        loss = training_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert_fp32_close(grads_b[name], grads_a[name], name)


def test_output_heads_agree_and_product_vectors_are_differentiable(make_model):
    model = make_model("tiny")
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    vectors = model.product_vectors(ids)
    assert vectors.shape == (2, 3, model.config.d_model)
    assert torch.allclose(vectors, model.output_weight[ids])
    hidden = torch.randn(5, model.config.d_model)
    assert torch.allclose(model.product_logits(hidden), hidden @ model.output_weight.t() + model.output_bias)
    vectors.sum().backward()
    trained = model._output_weight
    assert trained.grad is not None and trained.grad.abs().sum() > 0


def test_condition_on_mission_reads_the_given_mission(make_model, test_arrays):
    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    model = make_model("tiny", condition_on_mission=True)
    with torch.no_grad():
        model.trip.mission.weight.normal_()
        out = model(batch)
        other = model(batch, mission=(batch.labels[:, 3] % 4) + 1)
    assert "basket_mission" not in out.aux_logits
    assert not torch.allclose(out.context_hidden, other.context_hidden)
    with torch.no_grad():
        plain = make_model("tiny")(batch)  # unconditioned: labels are never read
        relabelled = make_model("tiny")(dataclasses.replace(batch, labels=torch.zeros_like(batch.labels)))
    assert torch.equal(plain.context_hidden, relabelled.context_hidden)


def test_product_category_buffer_is_saved_and_checked(make_model, model_cache):
    model = make_model("tiny")
    assert "product.product_category" in model.state_dict()
    assert model.product.product_category.any()
    with pytest.raises(ValueError, match="product_category must have shape"):
        model.set_product_category(np.zeros((3, 4), np.int64))


def test_triton_and_torch_backends_agree_on_tiny(make_model, train_arrays):
    """The same tiny model and batch through the Triton scan (interpreter on CPU) and the PyTorch path."""
    pytest.importorskip("triton")
    batch = collate(train_arrays, mixed_samples(train_arrays, 12)[:6], seed=3, epoch=0, train=True, max_history=24)
    results = {}
    for backend in ("torch", "triton"):
        set_backend(backend)
        model = make_model("tiny", seed=9).train()
        loss = training_loss(model, batch)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_t, grads_t), (loss_k, grads_k) = results["torch"], results["triton"]
    assert_fp32_close(loss_k, loss_t, "loss")
    for name in grads_t:
        assert_fp32_close(grads_k[name], grads_t[name], name, bound=FP32_GRAD_REL_ERR)


def test_product_scores_are_catalogue_logits_plus_history_votes_with_promotions_lifted(make_model, test_arrays):
    """log(C(p) + sum over history positions holding p of exp(copy)), C the catalogue part: exp(logit_p + lift_p)
    for a product promoted to the basket, exp(logit_p) otherwise, scaled so that the catalogue keeps its mass;
    by a float64 loop per slot."""
    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    model = make_model("tiny", seed=6, promotions=True)
    with torch.no_grad():
        model.copy_query.weight.normal_()  # pointer scores far from uniform
        model.promotion_query.weight.normal_()
        out = model(batch)
        rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        scores = model.slot_scores(out, batch, rows, cols)
        logits = model.product_logits(out.basket_hidden[rows, cols]).double()
    checked = {"history": 0, "promotion": 0}
    for i, (row, col) in enumerate(zip(rows.tolist(), cols.tolist())):
        lifted = logits[i].clone()
        for k in batch.promotion_valid[row].nonzero().flatten().tolist():
            lifted[batch.promotion_items[row, k]] += out.promotion_lift[row, col, k].double()
            checked["promotion"] += 1
        expected = lifted.exp() * (logits[i].exp().sum() / lifted.exp().sum())
        for h in batch.history_valid[row].nonzero().flatten().tolist():
            expected[batch.history_items[row, h]] += out.copy_scores[row, col, h].double().exp()
            checked["history"] += 1
        assert_fp32_close(scores[i], expected.log(), f"slot {i}")
    assert checked["history"] > 100 and checked["promotion"] > 100, checked
    assert (~batch.history_valid.any(1))[rows].any()     # cold-start slots: the lifted catalogue part alone


def test_a_model_without_pointers_scores_with_catalogue_logits_only(make_model, test_arrays):
    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    assert batch.promotion_valid.any()   # the plan is there; the ablated model does not read it
    model = make_model("tiny", copy_head=False, promotions=False)
    assert not any(name.startswith(("copy", "promotion")) for name, _ in model.named_parameters())
    with torch.no_grad():
        out = model(batch)
        rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        scores = model.slot_scores(out, batch, rows, cols)
    assert out.copy_scores is None and out.promotion_lift is None and out.promotion_logits is None
    assert torch.equal(scores, model.product_logits(out.basket_hidden[rows, cols]))


def test_output_bias_starts_at_the_training_popularity(make_model, model_cache):
    from retailsim.model import product_counts_from_cache

    model = make_model("tiny")
    counts = product_counts_from_cache(model_cache)
    assert counts.shape == (model.config.vocab_size,) and counts[1:].sum() > 0
    model.init_output_bias(counts)
    mask_id = model.config.mask_id
    smoothed = torch.tensor(counts, dtype=torch.float64) + 1
    smoothed[[schema.PAD_ID, mask_id]] = 1
    expected = smoothed / smoothed.sum()
    assert_fp32_close(torch.softmax(model.output_bias.double(), 0), expected, "softmax(bias)")
    assert abs(float(torch.logsumexp(model.output_bias.detach().double(), 0)) - np.log(len(counts))) < 1e-4
    with pytest.raises(ValueError, match="product_counts must be"):
        model.init_output_bias(counts[:-1])



@pytest.mark.parametrize("copy_count", [True, False])
def test_copy_scores_add_query_key_purchase_features_and_offset(make_model, test_arrays, copy_count):
    """Each term of the pointer score, recomputed by hand: query . key / sqrt(d_copy) + a linear function of
    (age features, log count of the product in the window) + offset, the key reading the product's hierarchy
    embeddings; COPY_PAD_SCORE at padding; at initialisation every purchase scores the
    same (the personal frequency)."""
    from retailsim.model.copy_head import COPY_PAD_SCORE
    from retailsim.model.embeddings import age_features

    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    widths = dict(copy_count=copy_count, d_product=24)  # d_product != d_model: key widths differ
    model = make_model("tiny", seed=8, **widths)
    with torch.no_grad():
        for layer in (model.copy_query, model.copy_purchase):
            layer.weight.normal_()
        initial = make_model("tiny", seed=8, **widths)(batch).copy_scores
        out = model(batch)
        hidden, cfg = out.basket_hidden, model.config
        lengths = batch.history_valid.sum(1)

        def has_a_repeat(r: int) -> bool:
            real = batch.history_items[r][batch.history_valid[r]]
            return len(real.unique()) < len(real)

        # a row with history, padding and a product bought more than once
        row = next(r for r in range(len(batch)) if 0 < lengths[r] < lengths.max() and has_a_repeat(r))
        col = 0
        valid = batch.history_valid[row]
        items = batch.history_items[row].tolist()
        real = [items[h] for h in valid.nonzero().flatten().tolist()]
        log_count = torch.tensor([math.log(real.count(item)) if ok else 0.0 for item, ok in zip(items, valid)])
        categories = model.product.product_category[batch.history_items[row]]  # [H, 4]
        key_input = sum(table(categories[:, level]) for level, table in enumerate(model.product.hierarchy))
        query = model.copy_query(hidden[row, col])
        key = model.copy_key(key_input)
        features = age_features(batch.history_weeks_before[row], cfg.n_fourier)
        if copy_count:
            features = torch.cat([features, log_count[:, None]], -1)
        purchase = model.copy_purchase(features).squeeze(-1)
        expected = key @ query / math.sqrt(cfg.d_copy) + purchase + model.copy_offset
    assert valid.any() and (~valid).any()
    assert_fp32_close(out.copy_scores[row, col, valid], expected[valid], "copy scores")
    assert (out.copy_scores[row, col, ~valid] == COPY_PAD_SCORE).all()
    real = initial[batch.history_valid[:, None, :].expand_as(initial)]
    assert real.numel() and torch.equal(real, torch.full_like(real, float(model.copy_offset.detach())))


def test_log_window_counts_count_each_product_over_the_real_positions():
    from retailsim.model.copy_head import log_window_counts

    generator = torch.Generator().manual_seed(4)
    items = torch.randint(1, 6, (5, 12), generator=generator)  # few ids: many repeats
    valid = torch.rand(5, 12, generator=generator) < 0.7
    valid[0] = False  # no history at all
    items[~valid] = torch.randint(0, 6, (int((~valid).sum()),), generator=generator)  # padding ids never count
    got = log_window_counts(items, valid)
    for b in range(5):
        real = [int(items[b, h]) for h in range(12) if valid[b, h]]
        for h in range(12):
            expected = math.log(real.count(int(items[b, h]))) if valid[b, h] else 0.0
            assert got[b, h].item() == pytest.approx(expected, abs=1e-6), (b, h)


def test_the_window_count_weight_turns_counts_into_a_power(make_model, test_arrays):
    """With only the count feature's weight w set, a product's total vote is count ** (1 + w) · exp(offset)."""
    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    model = make_model("tiny", seed=3, promotions=False)  # the history votes alone
    w = 0.5
    with torch.no_grad():
        model.copy_purchase.weight[0, -1] = w  # query and the other purchase weights stay zero
        out = model(batch)
        rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        logits = model.product_logits(out.basket_hidden[rows, cols]).double()
        scores = model.slot_scores(out, batch, rows, cols).double()
    offset = float(model.copy_offset.detach()) + float(model.copy_purchase.bias.detach())
    checked, repeated = 0, 0
    for i, row in enumerate(rows.tolist()):
        real = batch.history_items[row][batch.history_valid[row]].tolist()
        for item in set(real):
            votes = real.count(item) ** (1 + w) * math.exp(offset)
            expected = math.log(math.exp(float(logits[i, item])) + votes)
            assert float(scores[i, item]) == pytest.approx(expected, rel=1e-4), (i, item)
            checked += 1
            repeated += real.count(item) > 1
    assert checked > 50 and repeated > 10  # products bought more than once, where the power shows


def test_the_promotion_lift_adds_query_key_plan_features_and_offset(make_model, test_arrays):
    """Each term of a promoted product's lift, recomputed by hand: query . key / sqrt(d_copy) (the key reading the
    scaled plan features and the product's hierarchy embeddings) + a linear function of the scaled features +
    offset, 0 at padding; the promoted products' logits are their catalogue logits; at initialisation no lift
    (the model starts as its ablation)."""
    from retailsim.model.world_model import PROMOTION_FEATURE_SCALE

    batch = eval_batch(test_arrays, mixed_samples(test_arrays))
    widths = dict(d_product=24, promotions=True)  # d_product != d_model: key widths differ
    model = make_model("tiny", seed=9, **widths)
    with torch.no_grad():
        for layer in (model.promotion_query, model.promotion_feature):
            layer.weight.normal_()
        model.promotion_offset.fill_(0.3)
        initial = make_model("tiny", seed=9, **widths)(batch)
        out = model(batch)
        valid = batch.promotion_valid
        row = next(r for r in range(len(batch)) if valid[r].any())
        col = 0
        items = batch.promotion_items[row]
        features = batch.promotion_features[row] * torch.tensor(PROMOTION_FEATURE_SCALE)
        categories = model.product.product_category[items]
        key_input = torch.cat([features, sum(table(categories[:, level])
                                             for level, table in enumerate(model.product.hierarchy))], -1)
        hidden = out.basket_hidden[row, col]
        expected = (model.promotion_key(key_input) @ model.promotion_query(hidden) / math.sqrt(model.config.d_copy)
                    + model.promotion_feature(features).squeeze(-1) + model.promotion_offset)
        logits = model.output_weight[items] @ hidden + model.output_bias[items]
    assert features[valid[row], 0].min() > 0.9      # discounts of 10 % and more, in tenths
    assert_fp32_close(out.promotion_lift[row, col, valid[row]], expected[valid[row]], "promotion lift")
    assert_fp32_close(out.promotion_logits[row, col, valid[row]], logits[valid[row]], "promotion logits")
    padded = ~valid[:, None, :].expand_as(out.promotion_lift)
    assert padded.any() and (out.promotion_lift[padded] == 0).all()
    assert valid.any() and (initial.promotion_lift == 0).all()


def test_the_promotion_shift_keeps_the_catalogue_mass():
    """float64: exp(lse) = sum of the lifted, shifted logits, for random rows, a row without promotions (no shift)
    and a row whose promoted products hold all its mass (finite)."""
    from retailsim.model import copy_head

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 40, generator=generator, dtype=torch.float64) * 3
    items = torch.stack([torch.randperm(39, generator=generator)[:6] + 1 for _ in range(5)])
    lift = torch.randn(5, 6, generator=generator, dtype=torch.float64) * 2
    valid = torch.rand(5, 6, generator=generator) < 0.7
    valid[1] = False
    lifted = copy_head.lifted_logits(logits, lift, items, valid)
    assert_fp32_close(torch.logsumexp(lifted, -1), torch.logsumexp(logits, -1), "catalogue mass", bound=1e-12)
    assert torch.equal(lifted[1], logits[1])
    for r in (0, 2, 3, 4):
        on = items[r][valid[r]]
        rise = lifted[r, on] - logits[r, on]
        off = torch.ones(40, dtype=torch.bool)
        off[on] = False
        shift = lifted[r, off] - logits[r, off]
        assert_fp32_close(rise - shift[0], lift[r][valid[r]], "lift", bound=1e-12)
        assert torch.allclose(shift, shift[0].expand_as(shift))
    # every product promoted: a share of 1 - 1e-6 at most, so the shift stays finite
    everything = torch.arange(40)[None, :]
    full = copy_head.lifted_logits(logits[:1], torch.ones(1, 40, dtype=torch.float64), everything,
                                   torch.ones(1, 40, dtype=torch.bool))
    assert torch.isfinite(full).all()
