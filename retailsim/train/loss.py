"""WorldModelLoss (SPEC 5): the weighted sum of the focal, contrastive and auxiliary losses.

total = 0.60 focal + 0.20 contrastive + 0.08 basket size + 0.08 price band + 0.04 mean(basket type, mission)

* focal (gamma 2) over the masked positions, through ``retailsim.ops.linear_focal_loss`` on
  ``basket_hidden[masked]`` and the model's output projection: product logits are never materialised.
  With the model's copy head the target's probability is that of one softmax over the catalogue logits and
  the pointer scores (model/copy_head.py): the fused kernel at gamma 0 gives each row's cross-entropy, hence
  the catalogue log-partition lse = CE + target logit (its gradient is exactly the catalogue softmax); the
  pointer terms ([R, H], small) are added in PyTorch and the focal factor (1 - p)^gamma is applied to the
  joint p. With the week's promotions the target's catalogue logit takes its lift and the shift that keeps the
  catalogue's mass (copy_head.promotion_shift, from the promoted products' logits [R, P]), the log-partition
  staying the kernel's.
* contrastive (tau 0.07) through ``retailsim.ops.contrastive_loss``: every real basket item is an anchor (its
  decoder output); its positive is the product vector of the next real item of the same basket (cyclically;
  a one-item basket has none, -1); the candidates are the product vectors of the TRUE ids of every real item of
  the batch (the target where the position was masked, else the input id), grouped by batch row and labelled
  by product id, so same-basket items and other copies of the positive's product are not negatives.
* auxiliary heads: cross-entropy with label 0 (unknown) ignored; a batch whose labels are all unknown adds 0
  (never NaN). A head the model has switched off (e.g. a given mission) is left out of the mean.
* warm-up phase (``all_tasks=False``): the focal term alone, with its weight (0.60 focal).

All terms are computed in float32 whatever autocast produced.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from retailsim.data import schema
from retailsim.data.batching import Batch
from retailsim.model import copy_head
from retailsim.model.output import WorldModelOutput
from retailsim.ops import contrastive_loss, linear_focal_loss

COMPONENTS = ("focal", "contrastive", "basket_size", "price_band", "type_mission")


@dataclass(frozen=True)
class LossWeights:
    focal: float = 0.60
    contrastive: float = 0.20
    basket_size: float = 0.08
    price_band: float = 0.08
    type_mission: float = 0.04


def true_product_ids(batch: Batch) -> torch.Tensor:
    """[B, S] int64: the product each slot really holds (target at masked positions, input id elsewhere)."""
    return torch.where(batch.masked_positions, batch.targets, batch.basket_items)


def next_item_positives(basket_valid: torch.Tensor) -> torch.Tensor:
    """(N,) int64 over the real items in row-major order: index of the next real item of the same basket
    (cyclically), -1 for a basket of one item."""
    counts = basket_valid.sum(dim=1)  # [B]
    items_row = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)  # (N,)
    starts = torch.cumsum(counts, 0) - counts  # [B] first flat index of each row
    flat = torch.arange(len(items_row), device=counts.device)
    start, n = starts[items_row], counts[items_row]
    positive = start + (flat - start + 1) % n.clamp(min=1)
    return torch.where(n > 1, positive, torch.full_like(positive, -1))


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows whose label is known (label 0 ignored); 0 when no row is."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=schema.UNKNOWN_LABEL_ID, reduction="sum")
    return total / (labels != schema.UNKNOWN_LABEL_ID).sum().clamp(min=1)


class WorldModelLoss(torch.nn.Module):
    """``loss(model, batch, output, all_tasks=True) -> (total, components)``.

    ``components`` maps each name in COMPONENTS that was computed to a detached 0-dim tensor (no host sync);
    the caller turns them into floats when it logs.
    """

    def __init__(self, weights: LossWeights = LossWeights(), gamma: float = 2.0, temperature: float = 0.07) -> None:
        super().__init__()
        self.weights, self.gamma, self.temperature = weights, gamma, temperature

    def focal(self, model, batch: Batch, output: WorldModelOutput) -> torch.Tensor:
        masked = batch.masked_positions
        hidden = output.basket_hidden[masked].float()  # (R, D)
        targets = batch.targets[masked]  # (R,)
        weight, bias = model.output_weight.float(), model.output_bias
        bias = None if bias is None else bias.float()
        lift = output.promotion_lift
        if output.copy_scores is None and lift is None:
            return linear_focal_loss(hidden, weight, targets, bias=bias, gamma=self.gamma)
        if targets.numel() == 0:
            return hidden.sum() * 0.0
        target_logit = (hidden * weight[targets]).sum(-1) + (0.0 if bias is None else bias[targets])  # (R,)
        # the catalogue log-partition from the fused kernel: at gamma 0 a row's loss is lse - target logit
        catalogue_lse = linear_focal_loss(hidden, weight, targets, bias=bias, gamma=0.0,
                                          reduction="none") + target_logit  # (R,)
        rows = masked.nonzero(as_tuple=True)[0]
        if lift is not None:   # the promoted products' lift, the catalogue's mass kept (copy_head.promotion_shift)
            lift, items, valid = lift[masked].float(), batch.promotion_items[rows], batch.promotion_valid[rows]
            target_logit = (target_logit + copy_head.target_lift(lift, items, valid, targets)
                            + copy_head.promotion_shift(catalogue_lse, output.promotion_logits[masked].float(), lift,
                                                        valid))
        if output.copy_scores is None:
            log_p = target_logit - catalogue_lse
        else:
            log_p = copy_head.log_prob_target(target_logit, catalogue_lse, output.copy_scores[masked].float(),
                                              batch.history_items[rows], batch.history_valid[rows], targets)  # (R,)
        return (-(-torch.expm1(log_p)).pow(self.gamma) * log_p).mean()

    def contrastive(self, model, batch: Batch, output: WorldModelOutput) -> torch.Tensor:
        valid = batch.basket_valid
        anchors = output.basket_hidden[valid].float()  # (N, D)
        product_ids = true_product_ids(batch)[valid]  # (N,)
        candidates = model.product_vectors(product_ids).float()  # (N, D)
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]  # (N,)
        positive = next_item_positives(valid)
        if anchors.shape[0] == 0:
            return anchors.sum() * 0.0
        return contrastive_loss(anchors, candidates, positive, rows, rows, product_ids, temperature=self.temperature)

    def auxiliary(self, batch: Batch, output: WorldModelOutput) -> dict[str, torch.Tensor]:
        heads = {name: masked_cross_entropy(output.aux_logits[name], batch.labels[:, i])
                 for i, name in enumerate(schema.LABEL_TARGETS) if name in output.aux_logits}
        terms = {}
        if "basket_size" in heads:
            terms["basket_size"] = heads["basket_size"]
        if "basket_price_band" in heads:
            terms["price_band"] = heads["basket_price_band"]
        type_mission = [heads[name] for name in ("basket_type", "basket_mission") if name in heads]
        if type_mission:
            terms["type_mission"] = torch.stack(type_mission).mean()
        return terms

    def forward(self, model, batch: Batch, output: WorldModelOutput,
                all_tasks: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device_type = output.basket_hidden.device.type
        # float32 losses even inside the trainer's bf16 autocast (the fused kernels' matmuls included)
        precision = (torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu")
                     else contextlib.nullcontext())
        with precision:
            terms = {"focal": self.focal(model, batch, output)}
            if all_tasks:
                terms["contrastive"] = self.contrastive(model, batch, output)
                terms.update(self.auxiliary(batch, output))
        total = sum(getattr(self.weights, name) * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
