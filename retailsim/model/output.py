"""What ``WorldModel.forward(batch)`` returns: the contract between the model, the loss and the evaluator.

The model never materialises product logits in forward: the loss feeds ``basket_hidden`` at masked positions
and ``WorldModel.output_weight`` / ``WorldModel.output_bias`` to ``retailsim.ops.linear_focal_loss``; the
evaluator ranks the catalogue with ``WorldModel.product_scores`` (catalogue logits + pointer votes of the history,
model/copy_head.py) in chunks; the contrastive loss takes
candidates from ``WorldModel.product_vectors(product_ids)`` (the catalogue side, in the model's output space).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WorldModelOutput:
    """B samples, S basket slots, D = config.d_model.

    basket_hidden [B, S, D]     decoder output at each basket slot (padding slots are not meaningful)
    context_hidden [B, D]       decoder output at the context token (reads the whole basket and history)
    aux_logits {name: [B, K]}   one entry per head that is on, name in schema.LABEL_TARGETS,
                                K = len(schema.LABELS[name]) (index 0 = unknown, never a target)
    copy_scores [B, S, H]       pointer scores of each slot over the history positions (Batch.history_items),
                                COPY_PAD_SCORE at padding; None when the config has no copy head
    promotion_logits [B, S, P]  each slot's catalogue logits of the basket's promoted products
                                (Batch.promotion_items); None when the config's ``promotions`` is off
    promotion_lift [B, S, P]    the learned rise of those logits (0 at padding), applied with the shift that
                                keeps the catalogue's mass (copy_head.promotion_shift); None without promotions
    """

    basket_hidden: torch.Tensor
    context_hidden: torch.Tensor
    aux_logits: dict[str, torch.Tensor]
    copy_scores: torch.Tensor | None = None
    promotion_logits: torch.Tensor | None = None
    promotion_lift: torch.Tensor | None = None
