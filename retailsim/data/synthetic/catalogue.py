"""The product catalogue: a 4-level hierarchy, price tiers, prices, popularity, seasonality, complement pairs.

Products are numbered in hierarchy order, so every hierarchy node is a contiguous block of product indices.
Level 40 (coarsest) has ``N_DEPARTMENTS`` departments, each of one kind (Fresh, Grocery, Non Food); the kind is
what the trip's dominant mission steers. Codes follow LGSR: PRD0900001, CL00001 (level 10), DEP00001 (20),
G00001 (30), D00001 (40).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from retailsim.data.synthetic.config import STREAM_CATALOGUE, GeneratorConfig, stream

KINDS = ("Fresh", "Grocery", "Non Food")  # department kinds; names match LGSR's dominant missions
DEPARTMENT_KIND = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2], dtype=np.int8)  # kind of each level-40 department
N_DEPARTMENTS = len(DEPARTMENT_KIND)

TIERS = ("value", "mainstream", "premium")
TIER_SHARE = (0.30, 0.45, 0.25)
TIER_PRICE_FACTOR = np.array([0.65, 1.0, 1.6])
KIND_LOG_PRICE = np.array([0.55, 0.35, 1.0])  # log of a typical mainstream price (pounds) per kind
LOG_PRICE_SPREAD = 0.5

POPULARITY_SPREAD = 1.1  # sd of the log popularity: a few products sell far more than most
SEASONAL_SHARE = 0.25  # share of products with a yearly cycle
SEASON_AMPLITUDE = (0.4, 1.3)  # range of the cycle's amplitude in utility units
PAIRED_SHARE = 0.30  # share of products that belong to a complement pair


@dataclass
class Catalogue:
    n_products: int
    department: np.ndarray  # int16 [P] level-40 node
    kind: np.ndarray  # int8 [P] department kind (index into KINDS)
    tier: np.ndarray  # int8 [P] 0 value, 1 mainstream, 2 premium
    base_price_cents: np.ndarray  # int64 [P] shelf price
    popularity: np.ndarray  # float64 [P] log popularity (utility units)
    season_amplitude: np.ndarray  # float64 [P]; 0 for products without a cycle
    season_peak: np.ndarray  # float64 [P] week of the year where the product peaks
    quantity_rate: np.ndarray  # float64 [P] mean extra units per line (Poisson)
    partner: np.ndarray  # int32 [P] the complement of each product, -1 if none; partner[partner[p]] == p
    codes: pa.Array  # string [P] PROD_CODE
    level_codes: tuple[pa.Array, pa.Array, pa.Array, pa.Array]  # string [P] PROD_CODE_10, _20, _30, _40


def hierarchy_sizes(n_products: int) -> tuple[int, int, int, int]:
    """Number of nodes at levels 10, 20, 30, 40 (about LGSR's shape at 5,000 products)."""
    level_30 = max(N_DEPARTMENTS, n_products // 60)
    level_20 = max(level_30, n_products // 25)
    level_10 = max(level_20, n_products // 8)
    return level_10, level_20, level_30, N_DEPARTMENTS


def build_catalogue(config: GeneratorConfig) -> Catalogue:
    rng = stream(config.seed, STREAM_CATALOGUE)
    n = config.products
    sizes = hierarchy_sizes(n)
    # Nested contiguous blocks: product -> level-10 node -> level-20 node -> ... so the hierarchy is a tree.
    level_10 = (np.arange(n, dtype=np.int64) * sizes[0]) // n
    level_20 = (level_10 * sizes[1]) // sizes[0]
    level_30 = (level_20 * sizes[2]) // sizes[1]
    department = ((level_30 * sizes[3]) // sizes[2]).astype(np.int16)
    kind = DEPARTMENT_KIND[department]

    tier = rng.choice(len(TIERS), size=n, p=TIER_SHARE).astype(np.int8)
    log_price = KIND_LOG_PRICE[kind] + LOG_PRICE_SPREAD * rng.standard_normal(n)
    price = np.exp(log_price) * TIER_PRICE_FACTOR[tier]
    base_price_cents = np.clip(np.round(price * 100), 10, 5000).astype(np.int64)

    popularity = POPULARITY_SPREAD * rng.standard_normal(n)
    seasonal = rng.random(n) < SEASONAL_SHARE
    season_amplitude = np.where(seasonal, rng.uniform(*SEASON_AMPLITUDE, size=n), 0.0)
    season_peak = rng.uniform(0.0, 52.0, size=n)
    quantity_rate = rng.uniform(0.05, 0.6, size=n)

    # Disjoint pairs over a random order of products; pairs often cross departments (pasta & sauce, nappies &
    # wipes), which is what makes the rest of the basket informative about a masked item.
    n_pairs = int(n * PAIRED_SHARE) // 2
    order = rng.permutation(n)[: 2 * n_pairs].reshape(n_pairs, 2)
    partner = np.full(n, -1, dtype=np.int32)
    partner[order[:, 0]] = order[:, 1]
    partner[order[:, 1]] = order[:, 0]

    codes = pa.array([f"PRD{900001 + index:07d}" for index in range(n)], pa.string())
    level_names = (("CL", 5, level_10), ("DEP", 5, level_20), ("G", 5, level_30), ("D", 5, department))
    level_codes = tuple(
        pa.array([f"{prefix}{node + 1:0{width}d}" for node in range(nodes.max() + 1)], pa.string()).take(
            pa.array(nodes.astype(np.int32))
        )
        for prefix, width, nodes in level_names
    )
    return Catalogue(
        n_products=n,
        department=department,
        kind=kind,
        tier=tier,
        base_price_cents=base_price_cents,
        popularity=popularity,
        season_amplitude=season_amplitude,
        season_peak=season_peak,
        quantity_rate=quantity_rate,
        partner=partner,
        codes=codes,
        level_codes=level_codes,
    )
