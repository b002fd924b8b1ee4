"""``WorldModel``: T1–T6 encoders → history Mamba encoder → basket decoder → heads (SPEC 3.5, 4).

    context token [B, 1, D]  = Fusion(T1 customer ‖ T3 time ‖ T5 store ‖ T6 trip)
    basket tokens [B, S, D]  = Fusion(T2 product ‖ T4 price)           (MASK / hidden price at masked slots)
    history [B, H, D]        = Mamba blocks over (product vector, age) of the customer's past items, LayerNorm,
                               zero at padding; a learned "no history" slot is prepended as memory slot 0
    decoder                  = bidirectional layers over [context; basket], cross-attending to the history
    heads                    basket_hidden = LayerNorm(GELU(Linear(decoder output))) at each slot, product
                             logits = basket_hidden @ output_weight.T + output_bias; aux label heads from an MLP
                             over the context token
    copy head                (``copy_head``) pointer scores [B, S, H] of each slot over the customer's history
                             positions: query(basket_hidden) . key(purchase) / sqrt(d_copy) + a learned function
                             of the purchase's features (age, time of year, log count of its product in the
                             window) + offset; the key reads the purchased product's hierarchy embeddings
    promotions               (``promotions``) a lift [B, S, P] of each slot's catalogue logits of the products
                             promoted to the basket's store that week (Batch.promotion_items, from the plan a
                             retailer has before the week): query(basket_hidden) . key(plan features, hierarchy) /
                             sqrt(d_copy) + a learned function of the plan features + offset

The copy head makes "buy it again" a first-class prediction: the slot's distribution is one softmax over the
catalogue logits and the pointer scores together, every past purchase voting for its product
(model/copy_head.py). At initialisation every purchase has the same score, so the pointer starts as the
personal-frequency baseline and learns from there. A promoted product's catalogue logit rises by its lift and
the catalogue part keeps its total mass (copy_head.promotion_shift): promotions move probability between
catalogue products, not away from the past purchases. The lift starts at 0, so the model starts as its
ablation. ``product_scores`` gives the log-scores; the loss gets the
catalogue log-partition from the fused ``linear_focal_loss`` and adds the pointer terms itself (train/loss.py),
so training still never materialises catalogue logits.

Product logits are never materialised in ``forward``: the loss calls ``linear_focal_loss`` on ``basket_hidden``
with ``output_weight``/``output_bias``, the evaluator calls ``product_scores`` in chunks (see output.py).
No autocast inside: the trainer wraps the call (bf16 on CUDA); on CPU/MPS everything is fp32.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.utils.checkpoint

from retailsim.data import schema
from retailsim.data.batching import Batch
from retailsim.data.promotions import PROMOTION_FEATURES
from retailsim.model import copy_head
from retailsim.model.config import WorldModelConfig
from retailsim.model.decoder import DecoderLayer
from retailsim.model.embeddings import (CustomerEncoder, Fusion, HistoryInput, PriceEncoder, ProductEncoder,
                                        StoreEncoder, TimeEncoder, TripEncoder, age_features)
from retailsim.model.mamba import MambaBlock
from retailsim.model.output import WorldModelOutput

_MISSION_COLUMN = schema.LABEL_TARGETS.index("basket_mission")
# The plan features as the promotion lift reads them: the discount in tenths off, the flags as they are. A
# fraction off (0.1-0.35) would need a weight of 5-20 to move the lift by a unit, more than Adam's lr-sized steps
# travel in a few epochs.
PROMOTION_FEATURE_SCALE = (10.0, 1.0, 1.0, 1.0)


class WorldModel(nn.Module):
    """The hybrid Mamba–Transformer world model of one basket given its customer, trip and history.

    Example::

        >>> config = WorldModelConfig.from_name("small", **data_sizes_from_cache("data/cache"))
        >>> model = WorldModel(config, product_category=product_category_from_cache("data/cache"))
        >>> out = model(batch)              # WorldModelOutput(basket_hidden, context_hidden, aux_logits)
        >>> rows, cols = batch.masked_positions.nonzero(as_tuple=True)
        >>> scores = model.slot_scores(out, batch, rows, cols)   # [M, V] log-scores over the catalogue
    """

    def __init__(self, config: WorldModelConfig, product_category=None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        d = config.d_model
        # --- encoders (SPEC 3.5) ---
        self.product = ProductEncoder(config)                                     # T2
        self.customer = CustomerEncoder(config)                                   # T1
        self.time = TimeEncoder(config)                                           # T3
        self.price = PriceEncoder(config)                                         # T4
        self.store = StoreEncoder(config)                                         # T5
        self.trip = TripEncoder(config)                                           # T6
        self.context_fusion = Fusion(config.d_customer + config.d_time + config.d_store + config.d_trip, d)
        self.basket_fusion = Fusion(config.d_product + config.d_price, d)
        # --- history encoder ---
        self.history_input = HistoryInput(config)
        self.mamba = nn.ModuleList(MambaBlock(config) for _ in range(config.n_mamba_layers))
        self.history_norm = nn.LayerNorm(d)
        self.no_history = nn.Parameter(torch.zeros(d))
        # --- basket decoder ---
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        # --- heads ---
        self._output_weight = nn.Parameter(torch.empty(config.vocab_size, d))
        self._output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        # BERT-style prediction transform: basket_hidden lives in the output space the loss and evaluator read.
        self.basket_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.aux_trunk = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.aux_heads = nn.ModuleDict({name: nn.Linear(d, len(schema.LABELS[name])) for name in config.aux_heads})
        if config.copy_head:
            self.copy_query = nn.Linear(d, config.d_copy)
            self.copy_key = nn.Linear(config.d_product, config.d_copy)
            # purchase features (age_features, then the log window count) -> score
            self.copy_purchase = nn.Linear(2 * config.n_fourier + 1 + int(config.copy_count), 1)
            self.copy_offset = nn.Parameter(torch.zeros(()))
        if config.promotions:
            n_features = len(PROMOTION_FEATURES)
            self.promotion_query = nn.Linear(d, config.d_copy)
            self.promotion_key = nn.Linear(n_features + config.d_product, config.d_copy)
            self.promotion_feature = nn.Linear(n_features, 1)
            self.promotion_offset = nn.Parameter(torch.zeros(()))
            self.register_buffer("promotion_feature_scale", torch.tensor(PROMOTION_FEATURE_SCALE), persistent=False)
        self.reset_parameters()
        if product_category is not None:
            self.set_product_category(product_category)

    # ---------------------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """N(0, 0.02) for linear and embedding weights, zero biases; residual output projections scaled by
        1/sqrt(2 · layers) (GPT-2); the Mamba SSM parameters keep Mamba's own initialisation."""
        n_residual = 2 * (self.config.n_mamba_layers + self.config.n_decoder_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(n_residual) if name.endswith(("out_proj", "attention.out", "ffn.2")) else 0.02
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.mamba:
            block.mixer.reset_ssm_parameters()
        if self._output_weight is not None:
            nn.init.normal_(self._output_weight, std=0.02)
        if self.config.copy_head:
            # every purchase one equal vote at the start (the personal-frequency baseline); the query and the
            # purchase features learn from zero, so the pointer starts without random-score noise; a full history
            # window starts with about half the probability mass (the bias-free catalogue logits start near 0)
            for layer in (self.copy_query, self.copy_purchase):
                nn.init.zeros_(layer.weight)
            nn.init.constant_(self.copy_offset, max(0.0, math.log(self.config.vocab_size / self.config.max_history)))
        if self.config.promotions:
            # no lift at the start (query and feature weights zero, offset 0): the model starts as its ablation
            for layer in (self.promotion_query, self.promotion_feature):
                nn.init.zeros_(layer.weight)
            nn.init.zeros_(self.promotion_offset)

    def set_product_category(self, product_category) -> None:
        """Install the hierarchy table [vocab_size, 4] (``product_category_from_cache``) in the buffer."""
        table = torch.as_tensor(np.asarray(product_category), dtype=torch.long)
        expected = tuple(self.product.product_category.shape)
        if tuple(table.shape) != expected:
            raise ValueError(f"product_category must have shape {expected}, got {tuple(table.shape)}.")
        sizes = torch.tensor(self.config.category_sizes)
        if (table < 0).any() or (table >= sizes).any():
            raise ValueError(f"product_category holds ids outside the config's category_sizes "
                             f"{self.config.category_sizes}.")
        self.product.product_category.copy_(table)

    def init_output_bias(self, product_counts) -> None:
        """Output bias = log of the smoothed training frequency of each product id + log V (``counts + 1``; PAD and
        MASK, never targets, get the rarest product's value): the catalogue softmax starts at the popularity
        baseline instead of uniform, and a uniform frequency leaves the bias at 0 (the copy offset's premise).
        ``product_counts`` [vocab_size] from ``product_counts_from_cache``."""
        counts = torch.as_tensor(np.asarray(product_counts), dtype=torch.float64)
        if counts.shape != self._output_bias.shape or (counts < 0).any():
            raise ValueError(f"product_counts must be {tuple(self._output_bias.shape)} non-negative counts, got "
                             f"shape {tuple(counts.shape)}.")
        counts = counts.clone()
        counts[[schema.PAD_ID, self.config.mask_id]] = 0
        prior = torch.log((counts + 1) / (counts + 1).sum()) + math.log(len(counts))
        with torch.no_grad():
            self._output_bias.copy_(prior.to(self._output_bias.dtype))

    # ---------------------------------------------------------------------------------------------------
    @property
    def output_weight(self) -> torch.Tensor:
        """[V, D]: the product output vectors."""
        return self._output_weight

    @property
    def output_bias(self) -> torch.Tensor:
        """[V]."""
        return self._output_bias

    def product_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] → [..., V]: logits over the whole vocabulary (chunk the rows for big catalogues)."""
        return hidden @ self.output_weight.t() + self.output_bias

    def product_scores(self, hidden: torch.Tensor, copy_scores: torch.Tensor | None = None,
                       history_items: torch.Tensor | None = None, promotion_lift: torch.Tensor | None = None,
                       promotion_items: torch.Tensor | None = None,
                       promotion_valid: torch.Tensor | None = None) -> torch.Tensor:
        """[R, D] slot outputs (+ their pointer scores [R, H] and history items [R, H]) → [R, V] log-scores
        log(exp(logit_p) + Σ_{h: history_h = p} exp(copy_h)) (copy_head.py); the catalogue logits alone without
        a copy head. With ``promotion_lift`` [R, P] (and the rows' promotion_items / promotion_valid [R, P]) the
        promoted products' catalogue logits are lifted, the catalogue keeping its mass (copy_head.lifted_logits).
        Unnormalised: rank them, or softmax them over the allowed candidates."""
        logits = self.product_logits(hidden)
        if promotion_lift is not None:
            logits = copy_head.lifted_logits(logits, promotion_lift, promotion_items, promotion_valid)
        if copy_scores is None:
            return logits
        return copy_head.log_scores(logits, copy_scores, history_items)

    def slot_scores(self, output: WorldModelOutput, batch: Batch, rows: torch.Tensor,
                    cols: torch.Tensor) -> torch.Tensor:
        """[R, V] ``product_scores`` of the slots (rows[i], cols[i]) of ``batch`` (e.g. its masked positions)."""
        copy = None if output.copy_scores is None else output.copy_scores[rows, cols]
        lift = None if output.promotion_lift is None else output.promotion_lift[rows, cols]
        return self.product_scores(output.basket_hidden[rows, cols], copy, batch.history_items[rows], lift,
                                   batch.promotion_items[rows], batch.promotion_valid[rows])

    def product_vectors(self, product_ids: torch.Tensor) -> torch.Tensor:
        """[...] ids → [..., D]: the products' output-space vectors (rows of ``output_weight``), differentiable."""
        return self._output_weight[product_ids]

    # ---------------------------------------------------------------------------------------------------
    def _run(self, layer: nn.Module, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def encode_history(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory [B, 1 + H, D], memory_valid [B, 1 + H]): the "no history" slot, then the encoded history."""
        valid = batch.history_valid                                               # [B, H]
        x = self.history_input(self.product(batch.history_items), batch.history_weeks_before)  # [B, H, D]
        for block in self.mamba:
            x = self._run(block, x)
        x = self.history_norm(x) * valid.unsqueeze(-1)                            # zero the padded outputs
        slot = self.no_history.expand(x.shape[0], 1, -1)                          # [B, 1, D]
        memory = torch.cat([slot, x], dim=1)                                      # [B, 1 + H, D]
        memory_valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)   # [B, 1 + H]
        return memory, memory_valid

    def forward(self, batch: Batch, mission: torch.Tensor | None = None) -> WorldModelOutput:
        """``mission`` [B] (label ids) only with ``condition_on_mission``; default: the batch's mission column."""
        if self.config.condition_on_mission and mission is None:
            mission = batch.labels[:, _MISSION_COLUMN]
        context = self.context_fusion(torch.cat([
            self.customer(batch),                                                 # [B, d_customer]
            self.time(batch.time),                                                # [B, d_time]
            self.store(batch.store),                                              # [B, d_store]
            self.trip(batch.trip, mission),                                       # [B, d_trip]
        ], dim=-1))                                                               # [B, D]
        price_visible = batch.basket_valid & ~batch.price_hidden                  # [B, S]
        basket = self.basket_fusion(torch.cat([
            self.product(batch.basket_items),                                     # [B, S, d_product]
            self.price(batch.basket_price, price_visible),                        # [B, S, d_price]
        ], dim=-1))                                                               # [B, S, D]
        memory, memory_valid = self.encode_history(batch)

        tokens = torch.cat([context.unsqueeze(1), basket], dim=1)                 # [B, 1 + S, D]
        token_valid = torch.cat([torch.ones_like(batch.basket_valid[:, :1]), batch.basket_valid], dim=1)
        for layer in self.decoder:
            tokens = self._run(layer, tokens, token_valid, memory, memory_valid)
        tokens = self.decoder_norm(tokens)
        context_hidden = tokens[:, 0]                                             # [B, D]
        basket_hidden = self.basket_head(tokens[:, 1:])                           # [B, S, D]
        trunk = self.aux_trunk(context_hidden)                                    # [B, D]
        aux = {name: head(trunk) for name, head in self.aux_heads.items()}        # {name: [B, K]}
        copy = self.copy_scores(basket_hidden, batch) if self.config.copy_head else None
        promotion_logits, lift = self.promotion_terms(basket_hidden, batch) if self.config.promotions else (None, None)
        return WorldModelOutput(basket_hidden=basket_hidden, context_hidden=context_hidden, aux_logits=aux,
                                copy_scores=copy, promotion_logits=promotion_logits, promotion_lift=lift)

    def promotion_terms(self, basket_hidden: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, S, P] each slot's catalogue logits of the basket's promoted products, basket_hidden . output
        vector + output bias for these P products only; [B, S, P] their lift, query(slot) . key(plan features,
        hierarchy embeddings) / sqrt(d_copy) + feature score + offset, the features scaled by
        PROMOTION_FEATURE_SCALE, 0 at padding). A basket without promotions (or a cache without a plan) has none
        valid: its distribution is then the ablated model's."""
        items, valid = batch.promotion_items, batch.promotion_valid
        features = batch.promotion_features * self.promotion_feature_scale       # [B, P, 4]
        vectors = self.product_vectors(items)                                     # [B, P, D]
        device_type = basket_hidden.device.type
        # float32 like the loss's catalogue log-partition, whose shift these logits enter (outside autocast)
        precision = (torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu")
                     else contextlib.nullcontext())
        with precision:
            logits = (basket_hidden.float() @ vectors.float().transpose(1, 2)
                      + self.output_bias[items].float()[:, None, :])                # [B, S, P]
        key_input = torch.cat([features, self.product.hierarchy_vectors(items)], dim=-1)
        query = self.promotion_query(basket_hidden)                               # [B, S, d_copy]
        key = self.promotion_key(key_input)                                       # [B, P, d_copy]
        lift = (query @ key.transpose(1, 2) / math.sqrt(self.config.d_copy)
                + self.promotion_feature(features).squeeze(-1)[:, None, :] + self.promotion_offset)
        return logits, lift.masked_fill(~valid[:, None, :], 0.0)

    def copy_scores(self, basket_hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """[B, S, H] pointer scores of each slot over the history positions: query(slot) . key(purchase) /
        sqrt(d_copy) + purchase score(age features, log window count) + offset; the key reads the purchased
        product's hierarchy embeddings (keys from the purchase's Mamba encoding ranked repeats worse:
        docs/experiments.md). COPY_PAD_SCORE at padding (finite, so a customer without history gives zero weight and
        finite gradients, never NaN)."""
        items, valid = batch.history_items, batch.history_valid                   # [B, H]
        key_input = self.product.hierarchy_vectors(items)                         # [B, H, d_product]
        features = age_features(batch.history_weeks_before, self.config.n_fourier)  # [B, H, 2 n_fourier + 1]
        if self.config.copy_count:
            features = torch.cat([features, copy_head.log_window_counts(items, valid).unsqueeze(-1)], dim=-1)
        query = self.copy_query(basket_hidden)                                    # [B, S, d_copy]
        key = self.copy_key(key_input)                                            # [B, H, d_copy]
        purchase = self.copy_purchase(features).squeeze(-1)                       # [B, H]
        scores = query @ key.transpose(1, 2) / math.sqrt(self.config.d_copy) + purchase[:, None, :] + self.copy_offset
        return scores.masked_fill(~valid[:, None, :], copy_head.COPY_PAD_SCORE)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
