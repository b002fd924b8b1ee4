"""WorldModelLoss against a direct float64 computation on a real tiny-model batch (SPEC 5)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from retailsim.data import schema
from retailsim.data.loader import make_loader
from retailsim.model.output import WorldModelOutput
from retailsim.model.copy_head import COPY_PAD_SCORE
from retailsim.ops import set_backend
from retailsim.train.loss import LossWeights, WorldModelLoss, next_item_positives, true_product_ids
from tests.tolerances import FP32_GRAD_REL_ERR, FP32_REL_ERR, assert_fp32_close

TEMPERATURE, GAMMA = 0.07, 2.0


@pytest.fixture(params=["catalogue", "copy", "promotion"])
def model_batch_output(request, tiny_cache, tiny_model_factory):
    """The tiny model's float64 outputs on a batch; "catalogue": without pointer scores, "copy": the copy head's
    only, "promotion": the copy head's and the promoted products' (the generated cache has a plan)."""
    set_backend("torch")
    torch.manual_seed(11)
    model = tiny_model_factory("tiny", tiny_cache, False, promotions=True)
    batch = next(iter(make_loader(tiny_cache, "train", batch_size=16, seed=5)))
    with torch.no_grad():
        model.copy_query.weight.normal_()  # pointer scores far from uniform
        model.promotion_query.weight.normal_()
        model.promotion_offset.fill_(0.5)
        output = model(batch)
        # the loss and the references read the same float64 values: only the loss's own arithmetic differs
        copy = output.copy_scores.double() if request.param != "catalogue" else None
        weight, bias = model.output_weight.double(), model.output_bias.double()
        promotion = (promotion_logits(output.basket_hidden.double(), weight, bias, batch),
                     output.promotion_lift.double()) if request.param == "promotion" else (None, None)
        output64 = WorldModelOutput(output.basket_hidden.double(), output.context_hidden.double(),
                                    {name: logits.double() for name, logits in output.aux_logits.items()}, copy,
                                    *promotion)
    model64 = SimpleNamespace(output_weight=weight, output_bias=bias, product_vectors=lambda ids: weight[ids])
    assert batch.promotion_valid[batch.masked_positions.any(1)].any()
    assert torch.equal(model.product_vectors(torch.arange(5)).double(), weight[:5])
    return model64, batch, output64


def promotion_logits(hidden, weight, bias, batch) -> torch.Tensor:
    """[B, S, P] each slot's catalogue logits of its basket's promoted products, from the given leaves."""
    items = batch.promotion_items
    return torch.einsum("bsd,bpd->bsp", hidden, weight[items]) + bias[items][:, None, :]


def focal_reference(model, batch, output) -> torch.Tensor:
    """Focal loss of the joint distribution C(p) + sum of exp(copy_h) over history positions holding p, C the
    catalogue part exp(logit_p), with the basket's promoted products' logits raised by their lift and C scaled
    back to the catalogue's mass; built by a loop over slots, promoted products and history positions."""
    losses = []
    for row, col in batch.masked_positions.nonzero().tolist():
        logits = (output.basket_hidden[row, col].double() @ model.output_weight.double().t()
                  + model.output_bias.double())
        mass = logits.exp()
        if output.promotion_lift is not None:
            lifted = logits
            for k in batch.promotion_valid[row].nonzero().flatten().tolist():
                lifted = lifted.index_add(0, batch.promotion_items[row, k:k + 1],
                                          output.promotion_lift[row, col, k:k + 1].double())
            mass = lifted.exp() * (mass.sum() / lifted.exp().sum())
        if output.copy_scores is not None:
            for h in batch.history_valid[row].nonzero().flatten().tolist():
                mass = mass.index_add(0, batch.history_items[row, h:h + 1],
                                      output.copy_scores[row, col, h:h + 1].double().exp())
        p = mass[batch.targets[row, col]] / mass.sum()
        losses.append(-(1 - p) ** GAMMA * torch.log(p))
    return torch.stack(losses).mean()


def contrastive_reference(model, batch, output) -> torch.Tensor:
    """loss_i = -s_ip + log sum_{j in {p} + other-basket items of another product} exp(s_ij), by loops."""
    anchors, rows, labels, candidates = [], [], [], []
    ids = true_product_ids(batch)
    for b in range(batch.basket_items.shape[0]):
        for s in range(batch.basket_items.shape[1]):
            if batch.basket_valid[b, s]:
                anchors.append(output.basket_hidden[b, s].double())
                candidates.append(model.product_vectors(ids[b, s]).double())
                rows.append(b)
                labels.append(int(ids[b, s]))
    losses = []
    for i in range(len(anchors)):
        same = [j for j in range(len(anchors)) if rows[j] == rows[i]]
        if len(same) < 2:
            continue
        p = same[(same.index(i) + 1) % len(same)]  # the next real item of the basket
        allowed = [p] + [j for j in range(len(anchors)) if rows[j] != rows[i] and labels[j] != labels[p]]
        s = torch.stack([F.cosine_similarity(anchors[i], candidates[j], dim=0) for j in allowed]) / TEMPERATURE
        losses.append(-s[0] + torch.logsumexp(s, 0))
    return torch.stack(losses).mean()


def auxiliary_reference(batch, output) -> dict[str, torch.Tensor]:
    heads = {}
    for i, name in enumerate(schema.LABEL_TARGETS):
        labels, logits = batch.labels[:, i], output.aux_logits[name].double()
        known = labels != 0
        heads[name] = (F.cross_entropy(logits[known], labels[known]) if known.any()
                       else torch.zeros((), dtype=torch.float64))
    return heads


def close(actual, expected) -> bool:
    return abs(float(actual) - float(expected)) <= FP32_REL_ERR * max(1.0, abs(float(expected)))


def test_next_item_positives_cycle_within_each_basket():
    valid = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, False, False]])
    assert next_item_positives(valid).tolist() == [1, 2, 0, -1, 5, 4]


def test_every_component_matches_a_float64_computation(model_batch_output):
    model, batch, output = model_batch_output
    assert batch.masked_positions.any() and (batch.basket_valid.sum(1) > 1).any()
    total, parts = WorldModelLoss()(model, batch, output)
    focal, contrastive = focal_reference(model, batch, output), contrastive_reference(model, batch, output)
    heads = auxiliary_reference(batch, output)
    expected = {"focal": focal, "contrastive": contrastive, "basket_size": heads["basket_size"],
                "price_band": heads["basket_price_band"],
                "type_mission": (heads["basket_type"] + heads["basket_mission"]) / 2}
    for name, value in expected.items():
        assert close(parts[name], value), f"{name}: {float(parts[name])} vs {float(value)}"
    weights = LossWeights()
    expected_total = sum(getattr(weights, name) * value for name, value in expected.items())
    assert close(total, expected_total)
    assert (weights.focal, weights.contrastive, weights.basket_size, weights.price_band,
            weights.type_mission) == (0.60, 0.20, 0.08, 0.08, 0.04)


def test_warmup_is_the_focal_term_alone(model_batch_output):
    model, batch, output = model_batch_output
    total, parts = WorldModelLoss()(model, batch, output, all_tasks=False)
    assert set(parts) == {"focal"}
    assert close(total, 0.60 * focal_reference(model, batch, output))


def test_unknown_labels_are_ignored_and_all_unknown_adds_zero(model_batch_output):
    model, batch, output = model_batch_output
    batch.labels[:] = schema.UNKNOWN_LABEL_ID
    total, parts = WorldModelLoss()(model, batch, output)
    for name in ("basket_size", "price_band", "type_mission"):
        assert float(parts[name]) == 0.0
    assert torch.isfinite(total)


def test_gradients_reach_the_output_projection_and_every_head(tiny_cache, tiny_model_factory):
    set_backend("torch")
    torch.manual_seed(2)
    model = tiny_model_factory("tiny", tiny_cache, False)
    with torch.no_grad():
        model.copy_query.weight.normal_()  # zero at init, where the keys get no gradient yet
    batch = next(iter(make_loader(tiny_cache, "train", batch_size=16, seed=5)))
    total, _ = WorldModelLoss()(model, batch, model(batch))
    total.backward()
    assert model.output_bias.grad is not None and model.output_bias.grad.abs().sum() > 0
    for name, head in model.aux_heads.items():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, name
    for name in ("copy_query.weight", "copy_key.weight", "copy_purchase.weight", "copy_offset"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("model_batch_output", ["copy", "promotion"], indirect=True)
def test_copy_focal_gradients_match_float64_autograd(model_batch_output):
    """Gradients of the joint (catalogue + pointer) focal term through the fused kernel's log-partition, against
    float64 autograd through the loop reference, for the slot outputs, pointer scores, output weight and bias
    (the loss computes in float32 whatever it is given: float32 gradient tolerance)."""
    model, batch, output = model_batch_output
    leaves = {name: value.clone().requires_grad_() for name, value in (
        ("hidden", output.basket_hidden), ("copy", output.copy_scores), ("weight", model.output_weight),
        ("bias", model.output_bias)) + ((("lift", output.promotion_lift),)
                                         if output.promotion_lift is not None else ())}
    grads = []
    for loss_of in (lambda m, o: WorldModelLoss().focal(m, batch, o), lambda m, o: focal_reference(m, batch, o)):
        for leaf in leaves.values():
            leaf.grad = None
        model_leaves = SimpleNamespace(output_weight=leaves["weight"], output_bias=leaves["bias"])
        promoted = ((promotion_logits(leaves["hidden"], leaves["weight"], leaves["bias"], batch), leaves["lift"])
                    if "lift" in leaves else (None, None))
        out = WorldModelOutput(leaves["hidden"], output.context_hidden, output.aux_logits, leaves["copy"],
                               *promoted)
        loss_of(model_leaves, out).backward()
        grads.append({name: leaf.grad.clone() for name, leaf in leaves.items()})
    for name in leaves:
        assert grads[1][name].abs().sum() > 0, name
        assert_fp32_close(grads[0][name], grads[1][name], name, bound=FP32_GRAD_REL_ERR)


@pytest.mark.parametrize("model_batch_output", ["copy"], indirect=True)
def test_copy_focal_is_finite_for_customers_without_history(model_batch_output):
    model, batch, output = model_batch_output
    batch.history_valid[:] = False
    copy = output.copy_scores.clone().requires_grad_()
    out = WorldModelOutput(output.basket_hidden, output.context_hidden, output.aux_logits,
                           copy.masked_fill(~batch.history_valid[:, None, :], COPY_PAD_SCORE))
    loss = WorldModelLoss().focal(model, batch, out)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(copy.grad).all()
    catalogue_only = WorldModelOutput(output.basket_hidden, output.context_hidden, output.aux_logits, None)
    assert close(loss.detach(), focal_reference(model, batch, catalogue_only))
