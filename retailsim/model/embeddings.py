"""The input encoders T1–T6 of SPEC 3.5 and the fusions that turn them into decoder tokens.

Nothing here reads ``Batch.targets`` or ``Batch.labels`` (targets only), except the one documented switch
``condition_on_mission`` (simulation: a *given* mission is an input and its head is off). At masked positions the
product encoder sees the MASK id and nothing else (no hierarchy), and the price encoder is zeroed wherever
``price_hidden`` is set, so a masked slot carries no trace of its true product.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from retailsim.data import schema
from retailsim.data.batching import Batch
from retailsim.model.config import WorldModelConfig


def fourier_features(cycles: torch.Tensor, n_harmonics: int) -> torch.Tensor:
    """[..., 2 n]: sin and cos of 2π k · cycles for k = 1..n (cycles = position within a period, e.g. hour/24)."""
    k = torch.arange(1, n_harmonics + 1, device=cycles.device, dtype=torch.float32)
    angle = 2 * math.pi * cycles.float().unsqueeze(-1) * k                 # [..., n]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)        # [..., 2n]


def scalar_fourier_features(value: torch.Tensor, n_frequencies: int, base: float = 0.25) -> torch.Tensor:
    """[..., 2 n + 1]: value, then sin/cos of value · base · 2^k (k = 0..n-1): a non-periodic scalar at many scales."""
    omega = base * 2.0 ** torch.arange(n_frequencies, device=value.device, dtype=torch.float32)
    angle = value.float().unsqueeze(-1) * omega                           # [..., n]
    return torch.cat([value.float().unsqueeze(-1), torch.sin(angle), torch.cos(angle)], dim=-1)


class ProductEncoder(nn.Module):
    """T2: product embedding + hierarchy embeddings, [..., d_product]. MASK: the MASK row only; PAD: zeros.

    ``product_category`` [V, 4] (hierarchy ids per product id, from the cache) is a buffer saved with the weights,
    so a checkpoint carries the hierarchy it was trained with.
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.mask_id = config.mask_id
        self.embedding = nn.Embedding(config.vocab_size, config.d_product)
        self.hierarchy = nn.ModuleList(nn.Embedding(size, config.d_product) for size in config.category_sizes)
        self.register_buffer("product_category",
                             torch.zeros(config.vocab_size, len(config.category_sizes), dtype=torch.long))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(ids) + self.hierarchy_vectors(ids)      # [..., d_product]
        return vectors * (ids != schema.PAD_ID).unsqueeze(-1)

    def hierarchy_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., d_product]: the sum of the product's hierarchy embeddings (what it shares with its category);
        zero for MASK and PAD."""
        categories = self.product_category[ids]                           # [..., 4]
        hierarchy = sum(table(categories[..., level]) for level, table in enumerate(self.hierarchy))
        has_hierarchy = (ids != self.mask_id) & (ids != schema.PAD_ID)    # MASK: its own row only; PAD: zeros
        return hierarchy * has_hierarchy.unsqueeze(-1)


class CustomerEncoder(nn.Module):
    """T1 [B, d_customer]: lifestage + price band embeddings + MLP over history statistics and category shares;
    cold-start customers (id 0 = anonymous/new, or no prior baskets) get a learned "new" vector in place of the MLP.
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d = config.d_customer
        self.segment = nn.Embedding(len(schema.LABELS["customer_segment"]), d)
        self.price_band = nn.Embedding(len(schema.LABELS["customer_price_band"]), d)
        n_stats = 4 + config.n_history_categories
        self.stats = nn.Sequential(nn.Linear(n_stats, d), nn.GELU(), nn.Linear(d, d))
        self.new_customer = nn.Parameter(torch.zeros(d))

    def forward(self, batch: Batch) -> torch.Tensor:
        stats = torch.cat([batch.customer_stats, batch.history_category_shares], dim=-1)  # [B, 4 + C]
        history = self.stats(stats)                                                        # [B, d]
        cold = (batch.customer[:, 0] == schema.UNKNOWN_CUSTOMER_ID) | (batch.customer_stats[:, 0] <= 0)
        history = torch.where(cold.unsqueeze(-1), self.new_customer.expand_as(history), history)
        return history + self.segment(batch.customer[:, 1]) + self.price_band(batch.customer[:, 2])


class TimeEncoder(nn.Module):
    """T3 [B, d_time]: Fourier features of week-of-year/52, weekday/7, hour/24 and a linear trend on the week."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.n = config.n_fourier
        self.project = nn.Linear(3 * 2 * self.n + 1, config.d_time)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        week, week_of_year, weekday, hour = time.float().unbind(-1)
        features = torch.cat([fourier_features(week_of_year / 52, self.n), fourier_features(weekday / 7, self.n),
                              fourier_features(hour / 24, self.n), (week / 52).unsqueeze(-1)], dim=-1)
        return self.project(features)                                     # [B, d_time]


class PriceEncoder(nn.Module):
    """T4 [B, S, d_price]: Fourier features of the log price relative to the training median, promotion and
    has-price flags; exactly zero where ``price_hidden`` (MASK / random replacement) or at padding."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.n = config.n_fourier
        self.project = nn.Linear(2 * self.n + 1 + 2, config.d_price)

    def forward(self, price: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        log_rel, promo, has_price = price.unbind(-1)
        features = torch.cat([scalar_fourier_features(log_rel, self.n), promo.unsqueeze(-1),
                              has_price.unsqueeze(-1)], dim=-1)           # [B, S, 2n + 3]
        return self.project(features) * visible.unsqueeze(-1)


class StoreEncoder(nn.Module):
    """T5 [B, d_store]: store id + format + region embeddings."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.store = nn.Embedding(config.n_stores, config.d_store)
        self.format = nn.Embedding(len(schema.LABELS["store_format"]), config.d_store)
        self.region = nn.Embedding(config.n_store_regions, config.d_store)

    def forward(self, store: torch.Tensor) -> torch.Tensor:
        return self.store(store[:, 0]) + self.format(store[:, 1]) + self.region(store[:, 2])


class TripEncoder(nn.Module):
    """T6 [B, d_trip]: what is known before the basket is filled — log1p(days since the previous trip), has a
    previous trip, log1p(trips this week), store switch — plus, only with ``condition_on_mission``, the given
    mission's embedding."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(4, config.d_trip), nn.GELU(), nn.Linear(config.d_trip, config.d_trip))
        self.mission = (nn.Embedding(len(schema.LABELS["basket_mission"]), config.d_trip)
                        if config.condition_on_mission else None)

    def forward(self, trip: torch.Tensor, mission: torch.Tensor | None = None) -> torch.Tensor:
        days, has_previous, trips_this_week, store_switch = trip.unbind(-1)
        features = torch.stack([torch.log1p(days.clamp(min=0)), has_previous, torch.log1p(trips_this_week.clamp(min=0)),
                                store_switch], dim=-1)                    # [B, 4]
        out = self.project(features)
        if self.mission is not None:
            out = out + self.mission(mission)
        return out


class HistoryInput(nn.Module):
    """History item tokens [B, H, d_model]: the product encoder's vector and the item's age (weeks before the
    basket: log1p and its position in the year) projected to d_model."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.n = config.n_fourier
        self.project = nn.Linear(config.d_product + 2 * self.n + 1, config.d_model)

    def forward(self, product_vectors: torch.Tensor, weeks_before: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([product_vectors, age_features(weeks_before, self.n)], dim=-1))


def age_features(weeks_before: torch.Tensor, n_harmonics: int) -> torch.Tensor:
    """[..., 2 n + 1]: log1p(weeks before the basket) and the Fourier features of weeks / 52 (time of year)."""
    weeks = weeks_before.float()
    return torch.cat([torch.log1p(weeks).unsqueeze(-1), fourier_features(weeks / 52, n_harmonics)], dim=-1)


class Fusion(nn.Module):
    """Concatenated encoder outputs → d_model: Linear, GELU, Linear, LayerNorm."""

    def __init__(self, d_in: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(x))
