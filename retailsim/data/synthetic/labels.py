"""BASKET_* labels derived from the filled basket, the way LGSR derives them (from what is in the basket, not
from the shopper's intent):

- BASKET_SIZE from the number of lines: S up to 4, M 5 to 14, L 15 or more;
- BASKET_PRICE_SENSITIVITY from the mix of tiers: the mean of (value -1, mainstream 0, premium +1) over the
  lines; LA below -0.15, UM above +0.15, MM between;
- BASKET_TYPE from units and spend: Full Shop from 20 units or 45.00 spent, Top Up from 6 units or 12.00, else
  Small Shop;
- BASKET_DOMINANT_MISSION from the department kinds of the lines: the kind (Fresh, Grocery, Non Food) of at
  least half the lines, else Mixed.
A small share ``UNKNOWN_SHARE`` of each label is written as XX (unknown), independently per label.
"""
from __future__ import annotations

import numpy as np

from retailsim.data import schema
from retailsim.data.synthetic.catalogue import KINDS, Catalogue
from retailsim.data.synthetic.shopping import WeekBaskets

SIZE_LIMITS = (4, 14)  # most lines of S, of M
PRICE_SCORE_LIMIT = 0.15
FULL_SHOP = (20, 4500)  # units, spend in cents
TOP_UP = (6, 1200)
DOMINANT_SHARE = 0.5
UNKNOWN_SHARE = 0.01


def basket_labels(week: WeekBaskets, catalogue: Catalogue, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Label index per trip (into ``schema.LABELS[column]``, 0 = XX) for the four basket label columns."""
    n = week.n_trips
    lines = week.trip_lines
    size = np.where(lines <= SIZE_LIMITS[0], 1, np.where(lines <= SIZE_LIMITS[1], 2, 3))

    tier_score = np.bincount(week.line_trip, weights=catalogue.tier[week.line_product] - 1.0, minlength=n) / lines
    price_band = np.where(tier_score < -PRICE_SCORE_LIMIT, 1, np.where(tier_score > PRICE_SCORE_LIMIT, 3, 2))

    units = np.bincount(week.line_trip, weights=week.line_quantity, minlength=n)
    spend = np.bincount(week.line_trip, weights=week.line_spend_cents, minlength=n)
    full = (units >= FULL_SHOP[0]) | (spend >= FULL_SHOP[1])
    top_up = (units >= TOP_UP[0]) | (spend >= TOP_UP[1])
    basket_type = np.where(full, 3, np.where(top_up, 2, 1))

    kind_key = week.line_trip * len(KINDS) + catalogue.kind[week.line_product]
    kind_counts = np.bincount(kind_key, minlength=n * len(KINDS)).reshape(n, len(KINDS))
    top_kind = kind_counts.argmax(axis=1)
    dominant = kind_counts.max(axis=1) >= DOMINANT_SHARE * lines
    mission_names = schema.LABELS["basket_mission"]
    kind_label = np.array([mission_names.index(kind) for kind in KINDS])
    mission = np.where(dominant, kind_label[top_kind], mission_names.index("Mixed"))

    labels = {
        "BASKET_SIZE": size,
        "BASKET_PRICE_SENSITIVITY": price_band,
        "BASKET_TYPE": basket_type,
        "BASKET_DOMINANT_MISSION": mission,
    }
    unknown = rng.random((len(labels), n)) < UNKNOWN_SHARE
    return {
        column: np.where(unknown[index], schema.UNKNOWN_LABEL_ID, values).astype(np.int32)
        for index, (column, values) in enumerate(labels.items())
    }


LABEL_VOCABULARY = {
    "BASKET_SIZE": schema.LABELS["basket_size"],
    "BASKET_PRICE_SENSITIVITY": schema.LABELS["basket_price_band"],
    "BASKET_TYPE": schema.LABELS["basket_type"],
    "BASKET_DOMINANT_MISSION": schema.LABELS["basket_mission"],
}
