"""Ground truth: the generator's own probability of every written line, and the rank of the true item.

For the line at position ``j`` of a basket, with ``P`` the slot distribution of ``shopping.py`` (it depends on the
customer's latent state - price band, habit strength, favourites and their weights -, the trip's latent mission,
the week's promotions and seasonality, and the items at positions ``< j`` of the basket through the complement
term), the columns are:

- ``probability``: ``P(y) / (1 - sum_{e at positions < j} P(e))``, the exact probability with which the
  generator put ``y`` in that slot (items already in the basket are redrawn);
- ``probability_excluding_basket``: ``P(y) / (1 - sum_{o other items of the basket} P(o))``, the same
  distribution restricted to the candidates an evaluator ranks when the other items of the basket are visible;
- ``rank``: ``1 + #{p not in the basket : P(p) > P(y)}`` (strictly greater: ties count in the item's favour),
  the rank of ``y`` among all products with the basket's other items excluded.

Ranks are exact without scoring every product for every line: outside the customer's favourites and the
partners of earlier items, ``P(p) = w_explore * E[g, p]``, so those products are counted with one binary search
in the week's sorted explore table, and the few special products are corrected for one by one.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from retailsim.data.synthetic.catalogue import Catalogue
from retailsim.data.synthetic.market import N_PRICE_BANDS, WeekMarket
from retailsim.data.synthetic.missions import mission_kind_weight
from retailsim.data.synthetic.population import Customers
from retailsim.data.synthetic.shopping import COMPLEMENT_WEIGHT, SOURCE_NAMES, WeekBaskets

LINES_PER_CHUNK = 16384
ABSENT = np.iinfo(np.int64).max  # position of a product that is not in the basket

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("basket_id", pa.int64()),
        ("week", pa.int32()),
        ("shop_week", pa.int32()),
        ("position", pa.int16()),
        ("product_id", pa.string()),
        ("probability", pa.float64()),
        ("probability_excluding_basket", pa.float64()),
        ("rank", pa.int32()),
        ("source", pa.dictionary(pa.int8(), pa.string())),
    ]
)


def slot_weights(week: WeekBaskets, catalogue: Catalogue, customers: Customers):
    """Per line: number of earlier items with a partner, and the complement / habit / explore weights."""
    has_partner = (catalogue.partner[week.line_product] >= 0).astype(np.int64)
    running = np.cumsum(has_partner)
    trip_first_line = np.cumsum(week.trip_lines) - week.trip_lines
    before_trip = running[trip_first_line] - has_partner[trip_first_line]
    n_earlier_partners = running - has_partner - before_trip[week.line_trip]
    complement = np.where(n_earlier_partners > 0, COMPLEMENT_WEIGHT, 0.0)
    habit = customers.habit[week.trip_customer[week.line_trip]]
    return n_earlier_partners, complement, (1.0 - complement) * habit, (1.0 - complement) * (1.0 - habit)


def ground_truth(
    week: WeekBaskets,
    basket_id: np.ndarray,
    shop_week: int,
    market: WeekMarket,
    catalogue: Catalogue,
    customers: Customers,
) -> pa.Table:
    """One row per line of ``week`` (``GROUND_TRUTH_SCHEMA``), in the order the lines are written."""
    oracle = _WeekOracle(week, market, catalogue, customers)
    # Trips in order of basket length, about LINES_PER_CHUNK lines at a time: a chunk's candidate matrix is
    # as wide as its longest basket, so similar lengths keep the padding small.
    by_length = np.argsort(week.trip_lines, kind="stable")
    lines_before = np.cumsum(week.trip_lines[by_length]) - week.trip_lines[by_length]
    start = 0
    while start < week.n_trips:
        stop = int(np.searchsorted(lines_before, lines_before[start] + LINES_PER_CHUNK, side="left"))
        stop = max(stop, start + 1)
        oracle.score(by_length[start:stop])
        start = stop

    n_lines = len(week.line_trip)
    return pa.table(
        {
            "basket_id": pa.array(basket_id[week.line_trip]),
            "week": pa.array(np.full(n_lines, week.week_index + 1, dtype=np.int32)),
            "shop_week": pa.array(np.full(n_lines, shop_week, dtype=np.int32)),
            "position": pa.array(week.line_position.astype(np.int16)),
            "product_id": catalogue.codes.take(pa.array(week.line_product)),
            "probability": pa.array(oracle.probability),
            "probability_excluding_basket": pa.array(oracle.probability_excluding_basket),
            "rank": pa.array(oracle.rank.astype(np.int32)),
            "source": pa.DictionaryArray.from_arrays(
                pa.array(week.line_source), pa.array(list(SOURCE_NAMES), pa.string())
            ),
        },
        schema=GROUND_TRUTH_SCHEMA,
    )


class _WeekOracle:
    """Scores the lines of one week, a chunk of whole trips at a time."""

    def __init__(self, week: WeekBaskets, market: WeekMarket, catalogue: Catalogue, customers: Customers):
        self.week, self.market, self.catalogue, self.customers = week, market, catalogue, customers
        self.n_partners, self.w_complement, self.w_habit, self.w_explore = slot_weights(week, catalogue, customers)
        n_lines = len(week.line_trip)
        self.trip_first_line = np.cumsum(week.trip_lines) - week.trip_lines
        self.probability = np.empty(n_lines)
        self.probability_excluding_basket = np.empty(n_lines)
        self.rank = np.empty(n_lines, dtype=np.int64)
        # (trip, product) -> position of that product in the trip's basket, for every line of the week.
        line_key = week.line_trip * catalogue.n_products + week.line_product
        self.key_order = np.argsort(line_key, kind="stable")
        self.sorted_line_key = line_key[self.key_order]

    def basket_position(self, trip: np.ndarray, product: np.ndarray) -> np.ndarray:
        """Position of ``product`` in the basket of ``trip``; ABSENT when it is not there or is -1."""
        key = trip * self.catalogue.n_products + np.maximum(product, 0)
        index = np.minimum(np.searchsorted(self.sorted_line_key, key), len(self.sorted_line_key) - 1)
        found = (self.sorted_line_key[index] == key) & (product >= 0)
        return np.where(found, self.week.line_position[self.key_order[index]], ABSENT)

    def score(self, trips: np.ndarray) -> None:
        """Fill probability, probability_excluding_basket and rank for every line of ``trips``."""
        week, market, catalogue, customers = self.week, self.market, self.catalogue, self.customers
        n_lines = week.trip_lines[trips]
        row = np.repeat(np.arange(len(trips)), n_lines)  # line -> its trip's row in this chunk
        first_of_row = np.cumsum(n_lines) - n_lines
        lines = np.repeat(self.trip_first_line[trips] - first_of_row, n_lines) + np.arange(n_lines.sum())
        n_products = catalogue.n_products
        customer = week.trip_customer[trips]
        mission = week.trip_mission[trips]
        group = mission * N_PRICE_BANDS + customers.price_band[customer]

        # Candidates of each trip: its customer's favourites, its items and their partners (sorted, unique).
        width = int(week.trip_lines[trips].max())
        items = np.full((len(trips), width), -1, dtype=np.int64)
        items[row, week.line_position[lines]] = week.line_product[lines]
        partners = np.where(items >= 0, catalogue.partner[np.maximum(items, 0)], -1)
        candidates = np.sort(np.concatenate([customers.favourites[customer], items, partners], axis=1), axis=1)
        candidates[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -1
        valid = candidates >= 0  # [trips, K]
        product = np.maximum(candidates, 0)

        explore = market.explore[group[:, None], product]  # [trips, K]
        kind_weight = mission_kind_weight()
        favourite_key = customer[:, None] * n_products + product
        index = np.minimum(
            np.searchsorted(customers.favourite_keys, favourite_key), len(customers.favourite_keys) - 1
        )
        is_favourite = valid & (customers.favourite_keys[index] == favourite_key)
        favourite_kind = catalogue.kind[customers.favourites[customer]]
        habit_norm = (customers.favourite_weight[customer] * kind_weight[mission[:, None], favourite_kind]).sum(1)
        habit = np.where(
            is_favourite,
            customers.favourite_key_weight[index] * kind_weight[mission[:, None], catalogue.kind[product]],
            0.0,
        ) / habit_norm[:, None]  # [trips, K]
        trip_column = np.broadcast_to(trips[:, None], candidates.shape)
        in_basket_at = self.basket_position(trip_column, candidates)
        partner_at = self.basket_position(trip_column, np.where(valid, catalogue.partner[product], -1))

        # Each line sees its trip's candidates under its own slot weights.
        position = week.line_position[lines][:, None]
        w_explore = self.w_explore[lines]
        line_valid = valid[row]
        line_explore = explore[row]  # [lines, K]
        slot = (
            self.w_complement[lines, None] * (partner_at[row] < position) / np.maximum(self.n_partners[lines, None], 1)
            + self.w_habit[lines, None] * habit[row]
            + w_explore[:, None] * line_explore
        ) * line_valid  # [lines, K]: P(candidate) for this slot
        is_true = candidates[row] == week.line_product[lines][:, None]
        assert (is_true.sum(axis=1) == 1).all()
        true_probability = (slot * is_true).sum(axis=1)
        basket_at = in_basket_at[row]
        earlier_mass = (slot * (basket_at < position)).sum(axis=1)
        other_mass = (slot * ((basket_at != ABSENT) & ~is_true)).sum(axis=1)
        self.probability[lines] = np.minimum(true_probability / (1.0 - earlier_mass), 1.0)
        self.probability_excluding_basket[lines] = np.minimum(true_probability / (1.0 - other_mass), 1.0)

        # Rank. Products off the candidate list have P = w_explore * E: count those above the true item's
        # probability by binary search in the sorted table (row g stored as 2 g + E), then swap the candidates'
        # dense verdicts for their exact ones (and drop the basket's own items). The same float expression
        # 2 g + E is compared on both sides so the two counts agree exactly.
        line_group = group[row]
        offset = 2.0 * line_group
        threshold = offset + np.minimum(true_probability / w_explore, 1.5)
        beaten_dense = (line_group + 1) * n_products - np.searchsorted(market.explore_sorted, threshold, side="right")
        special_dense = (line_valid & ((offset[:, None] + line_explore) > threshold[:, None])).sum(axis=1)
        special_exact = (line_valid & (basket_at == ABSENT) & (slot > true_probability[:, None])).sum(axis=1)
        self.rank[lines] = 1 + beaten_dense - special_dense + special_exact
