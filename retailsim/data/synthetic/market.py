"""One week of the market: promotions, shelf prices, and the choice table of explore slots.

An explore slot of a trip with mission ``m`` by a customer of price band ``b`` (LA, MM, UM) picks product ``p``
with probability ``E[g, p] = mix[m, department(p)] * softmax_{p' in department(p)} u[b, p']`` where
``g = m * 3 + b`` and the utility is
``u[b, p] = popularity[p] + PRICE_PREFERENCE[b, tier[p]] + season(p, week) + PROMOTION_RESPONSE[b] * discount[p]``.
Promoted products are cheaper that week and more likely to be chosen, the more so for price-sensitive shoppers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retailsim.data.synthetic.calendar import week_of_year
from retailsim.data.synthetic.catalogue import N_DEPARTMENTS, Catalogue
from retailsim.data.synthetic.config import STREAM_WEEK_MARKET, stream
from retailsim.data.synthetic.missions import N_MISSIONS, mission_department_mix

N_PRICE_BANDS = 3  # LA, MM, UM: the latent band of every shopper (the written label may be XX)
# Utility of each tier (value, mainstream, premium) per price band.
PRICE_PREFERENCE = np.array([[0.8, 0.0, -0.9], [0.0, 0.3, -0.2], [-0.9, 0.0, 0.8]])
PROMOTION_RESPONSE = np.array([5.0, 3.5, 2.0])  # utility per unit of discount (0.2 off -> +1.0 for LA)
PROMOTED_SHARE = 0.08
DISCOUNT_RANGE = (0.10, 0.35)
N_GROUPS = N_MISSIONS * N_PRICE_BANDS


@dataclass
class WeekMarket:
    week_index: int
    discount: np.ndarray  # float64 [P], 0 when not promoted
    price_cents: np.ndarray  # int64 [P] price paid this week before the store's own factor
    explore: np.ndarray  # float64 [N_GROUPS, P] explore-slot probabilities (rows sum to 1)
    explore_cdf: np.ndarray  # float64 [N_GROUPS * P]: row g holds g + cumsum(explore[g]) (one searchsorted)
    explore_sorted: np.ndarray  # float64 [N_GROUPS * P]: row g holds 2 g + sort(explore[g]) (oracle ranks)


def week_market(catalogue: Catalogue, seed: int, week_index: int) -> WeekMarket:
    rng = stream(seed, STREAM_WEEK_MARKET, week_index)
    n = catalogue.n_products
    promoted = rng.random(n) < PROMOTED_SHARE
    discount = np.where(promoted, rng.uniform(*DISCOUNT_RANGE, size=n), 0.0)
    price_cents = np.maximum(1, np.round(catalogue.base_price_cents * (1.0 - discount))).astype(np.int64)

    season = catalogue.season_amplitude * np.cos(
        2.0 * np.pi * (week_of_year(week_index) - catalogue.season_peak) / 52.0
    )
    utility = (
        catalogue.popularity[None, :]
        + PRICE_PREFERENCE[:, catalogue.tier]
        + season[None, :]
        + PROMOTION_RESPONSE[:, None] * discount[None, :]
    )  # [bands, P]
    weight = np.exp(utility - utility.max(axis=1, keepdims=True))
    department_total = np.zeros((N_PRICE_BANDS, N_DEPARTMENTS))
    for band in range(N_PRICE_BANDS):
        department_total[band] = np.bincount(catalogue.department, weights=weight[band], minlength=N_DEPARTMENTS)
    within_department = weight / department_total[:, catalogue.department]  # [bands, P]

    department_sizes = np.bincount(catalogue.department, minlength=N_DEPARTMENTS).astype(np.float64)
    mix = mission_department_mix(department_sizes)  # [missions, D]
    explore = (mix[:, None, catalogue.department] * within_department[None, :, :]).reshape(N_GROUPS, n)
    explore /= explore.sum(axis=1, keepdims=True)

    offsets = np.arange(N_GROUPS, dtype=np.float64)[:, None]
    cdf = np.cumsum(explore, axis=1)
    cdf[:, -1] = 1.0
    explore_cdf = (offsets + cdf).ravel()
    explore_sorted = (2.0 * offsets + np.sort(explore, axis=1)).ravel()
    return WeekMarket(week_index, discount, price_cents, explore, explore_cdf, explore_sorted)


def sample_explore(market: WeekMarket, group: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Products drawn from the explore distributions of ``group`` (one uniform in [0, 1) each)."""
    n = market.explore.shape[1]
    flat = np.searchsorted(market.explore_cdf, group + uniform, side="right")
    return np.minimum(flat - group * n, n - 1).astype(np.int32)
