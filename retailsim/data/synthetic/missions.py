"""Trip missions: a type (Small Shop / Top Up / Full Shop) times a dominant kind (Fresh / Grocery / Mixed /
Non Food). The type sets the basket size, the dominant kind sets the department mix of the items.

Missions are latent: the BASKET_TYPE and BASKET_DOMINANT_MISSION labels written to the CSVs are derived from the
basket that was actually filled (``labels.py``), as LGSR derives them, and can differ from the mission.
"""
from __future__ import annotations

import numpy as np

from retailsim.data import schema
from retailsim.data.synthetic.catalogue import DEPARTMENT_KIND, KINDS, N_DEPARTMENTS

TRIP_TYPES = schema.LABELS["basket_type"][1:]  # Small Shop, Top Up, Full Shop
DOMINANT_KINDS = schema.LABELS["basket_mission"][1:]  # Fresh, Grocery, Mixed, Non Food
N_MISSIONS = len(TRIP_TYPES) * len(DOMINANT_KINDS)  # mission = type * 4 + dominant

MAX_BASKET_LINES = 60

TYPE_BASE_LOGITS = np.log([0.35, 0.40, 0.25])
DOMINANT_BASE_LOGITS = np.log([0.30, 0.30, 0.30, 0.10])
# Lifestage (YA, OA, YF, OF, PE, OT) shifts the type: families do full shops, young adults small ones.
LIFESTAGE_TYPE_LOGITS = np.array(
    [[0.5, 0.0, -0.5], [0.0, 0.0, 0.0], [-0.3, 0.0, 0.6], [-0.3, 0.0, 0.6], [0.2, 0.2, -0.2], [0.0, 0.0, 0.0]]
)
# Store format (LS, MS, SS, XLS): small stores see small shops, extra-large stores full shops.
FORMAT_TYPE_LOGITS = np.array([[0.0, 0.0, 0.2], [0.1, 0.1, 0.0], [0.7, 0.2, -0.9], [-0.3, 0.0, 0.5]])
CUSTOMER_MISSION_SPREAD = 0.5  # sd of each customer's own mission logits

# Weight of each department kind (Fresh, Grocery, Non Food) in the item mix, per dominant kind.
DOMINANT_KIND_MIX = np.array(
    [[0.70, 0.22, 0.08], [0.20, 0.70, 0.10], [0.40, 0.45, 0.15], [0.10, 0.25, 0.65]]
)
assert [KINDS[index] for index in (0, 1, 2)] == [DOMINANT_KINDS[index] for index in (0, 1, 3)]


def mission_department_mix(department_sizes: np.ndarray) -> np.ndarray:
    """[N_MISSIONS, N_DEPARTMENTS] probability of each department for an explore slot of each mission.

    A kind's weight is shared by its departments in proportion to their number of products.
    """
    assert department_sizes.shape == (N_DEPARTMENTS,)
    kind_sizes = np.bincount(DEPARTMENT_KIND, weights=department_sizes, minlength=len(KINDS))
    share_in_kind = department_sizes / kind_sizes[DEPARTMENT_KIND]
    by_dominant = DOMINANT_KIND_MIX[:, DEPARTMENT_KIND] * share_in_kind  # [4, D]
    by_dominant /= by_dominant.sum(axis=1, keepdims=True)
    return np.tile(by_dominant, (len(TRIP_TYPES), 1))  # mission = type * 4 + dominant


def mission_kind_weight() -> np.ndarray:
    """[N_MISSIONS, 3] weight of each department kind for the habit slots of each mission."""
    return np.tile(DOMINANT_KIND_MIX, (len(TRIP_TYPES), 1))


def draw_basket_sizes(trip_type: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Target number of lines per trip: Small Shop ~3, Top Up ~8, Full Shop ~21 with a tail to 60."""
    n = len(trip_type)
    small = 1 + rng.poisson(1.8, size=n)
    top_up = 2 + rng.negative_binomial(3, 3.0 / 9.0, size=n)
    full = np.round(np.exp(np.log(17.0) + 0.55 * rng.standard_normal(n)))
    sizes = np.select([trip_type == 0, trip_type == 1], [small, top_up], default=np.maximum(full, 8))
    return np.clip(sizes, 1, MAX_BASKET_LINES).astype(np.int64)
