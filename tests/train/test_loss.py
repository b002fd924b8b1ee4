"""WorldModelLoss against a direct float64 computation on a real tiny-model batch (SPEC 5)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from retailsim.data import schema
from retailsim.data.loader import make_loader
from retailsim.model.output import WorldModelOutput
from retailsim.ops import set_backend
from retailsim.train.loss import LossWeights, WorldModelLoss, next_item_positives, true_product_ids
from tests.tolerances import FP32_REL_ERR

TEMPERATURE, GAMMA = 0.07, 2.0


@pytest.fixture
def model_batch_output(tiny_cache, tiny_model_factory):
    set_backend("torch")
    torch.manual_seed(11)
    model = tiny_model_factory("tiny", tiny_cache, False)
    batch = next(iter(make_loader(tiny_cache, "train", batch_size=16, seed=5)))
    with torch.no_grad():
        output = model(batch)
        # the loss and the references read the same float64 values: only the loss's own arithmetic differs
        output64 = WorldModelOutput(output.basket_hidden.double(), output.context_hidden.double(),
                                    {name: logits.double() for name, logits in output.aux_logits.items()})
        weight, bias = model.output_weight.double(), model.output_bias.double()
    model64 = SimpleNamespace(output_weight=weight, output_bias=bias, product_vectors=lambda ids: weight[ids])
    assert torch.equal(model.product_vectors(torch.arange(5)).double(), weight[:5])
    return model64, batch, output64


def focal_reference(model, batch, output) -> torch.Tensor:
    hidden = output.basket_hidden[batch.masked_positions].double()
    logits = hidden @ model.output_weight.double().t() + model.output_bias.double()
    ce = F.cross_entropy(logits, batch.targets[batch.masked_positions], reduction="none")
    return ((-torch.expm1(-ce)) ** GAMMA * ce).mean()


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
    batch = next(iter(make_loader(tiny_cache, "train", batch_size=16, seed=5)))
    total, _ = WorldModelLoss()(model, batch, model(batch))
    total.backward()
    assert model.output_bias.grad is not None and model.output_bias.grad.abs().sum() > 0
    for name, head in model.aux_heads.items():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, name
