"""One week of shopping: who makes trips, when and where, on which mission, and what goes into each basket.

Baskets are filled slot by slot (a loop over slot positions, vectorised over all baskets of the week). For the
slot at position ``j`` of a trip by customer ``c`` with mission ``m`` the item is drawn from

    P(p) = w_c * [p is the partner of an earlier item] / k
         + (1 - w_c) * habit_c * H(p)
         + (1 - w_c) * (1 - habit_c) * E[g, p]

where ``k`` is the number of earlier items that have a complement partner, ``w_c = COMPLEMENT_WEIGHT`` if
``k > 0`` else 0, ``H(p)`` is the customer's favourite weight of ``p`` times the mission's weight of its
department kind, normalised over the favourites, and ``E`` is the week's explore table (``market.py``). A draw
that repeats an earlier item of the basket is redrawn, so the slot's distribution is ``P`` restricted to the
products not yet in the basket and renormalised. ``oracle.py`` evaluates exactly this distribution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retailsim.data.synthetic.catalogue import Catalogue
from retailsim.data.synthetic.config import STREAM_WEEK_LINES, STREAM_WEEK_SLOTS, STREAM_WEEK_TRIPS, stream
from retailsim.data.synthetic.market import N_PRICE_BANDS, WeekMarket, sample_explore
from retailsim.data.synthetic.missions import (
    DOMINANT_KINDS,
    FORMAT_TYPE_LOGITS,
    draw_basket_sizes,
    mission_kind_weight,
)
from retailsim.data.synthetic.population import HOME_STORE_SHARE, STORE_FORMAT_PRICE, Customers, Stores

COMPLEMENT_WEIGHT = 0.25
MAX_REDRAWS = 200  # a basket whose slot cannot avoid repeating its items after this many draws stops there
SOURCE_NAMES = ("complement", "habit", "explore")

# Weekday (1 = Sunday .. 7 = Saturday) shares per lifestage; pensioners shop mid-week.
WEEKDAY_SHARE = np.array(
    [
        [0.13, 0.11, 0.11, 0.12, 0.14, 0.18, 0.21],
        [0.13, 0.12, 0.12, 0.13, 0.14, 0.17, 0.19],
        [0.15, 0.10, 0.10, 0.11, 0.13, 0.17, 0.24],
        [0.15, 0.11, 0.11, 0.12, 0.13, 0.16, 0.22],
        [0.08, 0.15, 0.17, 0.17, 0.17, 0.15, 0.11],
        [0.14, 0.13, 0.13, 0.13, 0.14, 0.16, 0.17],
    ]
)
HOUR_MEAN = np.array([17.5, 15.5, 15.0, 15.0, 11.5, 14.0])  # per lifestage
HOUR_SPREAD = 2.8
HOUR_RANGE = (7, 22)
WEEKLY_ACTIVITY_AMPLITUDE = 0.08  # trips rise a little towards the end of the year


@dataclass
class WeekBaskets:
    """The trips of one week in basket-id order and their lines in (basket, position) order."""

    week_index: int
    trip_customer: np.ndarray  # int64 [T]
    trip_store: np.ndarray  # int64 [T]
    trip_weekday: np.ndarray  # int8 [T] 1 = Sunday .. 7 = Saturday
    trip_hour: np.ndarray  # int8 [T]
    trip_mission: np.ndarray  # int64 [T] latent mission = type * 4 + dominant
    trip_lines: np.ndarray  # int64 [T] number of lines (>= 1)
    line_trip: np.ndarray  # int64 [N]
    line_position: np.ndarray  # int64 [N] 0-based slot in the basket
    line_product: np.ndarray  # int32 [N]
    line_source: np.ndarray  # int8 [N] index into SOURCE_NAMES
    line_quantity: np.ndarray  # int64 [N]
    line_spend_cents: np.ndarray  # int64 [N]

    @property
    def n_trips(self) -> int:
        return len(self.trip_customer)


def simulate_week(
    seed: int, week_index: int, catalogue: Catalogue, stores: Stores, customers: Customers, market: WeekMarket
) -> WeekBaskets:
    trips = _draw_trips(seed, week_index, stores, customers)
    customer, store, weekday, hour, mission, target = trips
    items, source, lines = _fill_baskets(seed, week_index, customer, mission, target, catalogue, customers, market)

    keep = lines > 0
    customer, store, weekday, hour, mission, lines = (a[keep] for a in (customer, store, weekday, hour, mission, lines))
    items, source = items[keep], source[keep]
    filled = items >= 0
    line_trip, line_position = np.nonzero(filled)  # row-major: basket order, then slot order
    line_product = items[filled]
    line_source = source[filled]

    rng = stream(seed, STREAM_WEEK_LINES, week_index)
    discount = market.discount[line_product]
    line_quantity = 1 + rng.poisson(catalogue.quantity_rate[line_product] + 0.5 * (discount > 0))
    unit_cents = np.round(market.price_cents[line_product] * STORE_FORMAT_PRICE[stores.format[store[line_trip]]])
    line_spend_cents = (line_quantity * np.maximum(unit_cents, 1)).astype(np.int64)
    return WeekBaskets(
        week_index=week_index,
        trip_customer=customer,
        trip_store=store,
        trip_weekday=weekday,
        trip_hour=hour,
        trip_mission=mission,
        trip_lines=lines,
        line_trip=line_trip.astype(np.int64),
        line_position=line_position.astype(np.int64),
        line_product=line_product,
        line_source=line_source,
        line_quantity=line_quantity.astype(np.int64),
        line_spend_cents=line_spend_cents,
    )


def _draw_trips(seed: int, week_index: int, stores: Stores, customers: Customers):
    """Trips in time order (weekday, hour, store, customer): who, where, when, which mission, target size."""
    rng = stream(seed, STREAM_WEEK_TRIPS, week_index)
    activity = 1.0 + WEEKLY_ACTIVITY_AMPLITUDE * np.cos(2.0 * np.pi * (week_index - 36) / 52.0)
    rate = np.where(customers.join_week <= week_index, customers.trip_rate * activity, 0.0)
    customer = np.repeat(np.arange(customers.n_customers), rng.poisson(rate))
    n = len(customer)

    at_home = rng.random(n) < HOME_STORE_SHARE
    elsewhere = np.searchsorted(stores.traffic_cdf, rng.random(n), side="right").clip(0, stores.n_stores - 1)
    store = np.where(at_home, customers.home_store[customer], elsewhere).astype(np.int64)

    lifestage = customers.lifestage[customer]
    weekday_cdf = np.cumsum(WEEKDAY_SHARE / WEEKDAY_SHARE.sum(axis=1, keepdims=True), axis=1)[lifestage]
    weekday = 1 + (rng.random(n)[:, None] >= weekday_cdf[:, :-1]).sum(axis=1)
    hour = np.clip(np.round(HOUR_MEAN[lifestage] + HOUR_SPREAD * rng.standard_normal(n)), *HOUR_RANGE)

    type_logits = customers.type_logits[customer] + FORMAT_TYPE_LOGITS[stores.format[store]]
    trip_type = np.argmax(type_logits + rng.gumbel(size=type_logits.shape), axis=1)
    dominant_logits = customers.dominant_logits[customer]
    dominant = np.argmax(dominant_logits + rng.gumbel(size=dominant_logits.shape), axis=1)
    mission = trip_type * len(DOMINANT_KINDS) + dominant
    target = draw_basket_sizes(trip_type, rng)

    order = np.lexsort((customer, store, hour, weekday))
    return (
        customer[order],
        store[order],
        weekday[order].astype(np.int8),
        hour[order].astype(np.int8),
        mission[order].astype(np.int64),
        target[order],
    )


def habit_weights(customers: Customers, catalogue: Catalogue, customer: np.ndarray, mission: np.ndarray):
    """[T, F] probability of each favourite in a habit slot of each trip (rows sum to 1)."""
    favourites = customers.favourites[customer]
    weight = customers.favourite_weight[customer] * mission_kind_weight()[mission[:, None], catalogue.kind[favourites]]
    return weight / weight.sum(axis=1, keepdims=True)


def _fill_baskets(seed, week_index, customer, mission, target, catalogue, customers, market):
    """Items [T, max lines] (-1 where empty), their sources, and the number of lines of each trip."""
    rng = stream(seed, STREAM_WEEK_SLOTS, week_index)
    n_trips = len(customer)
    width = int(target.max()) if n_trips else 0
    items = np.full((n_trips, width), -1, dtype=np.int32)
    source = np.full((n_trips, width), -1, dtype=np.int8)
    partner_list = np.full((n_trips, width), -1, dtype=np.int32)  # partners of the items so far
    n_partners = np.zeros(n_trips, dtype=np.int64)
    lines = target.copy()

    habit_cdf = np.cumsum(habit_weights(customers, catalogue, customer, mission), axis=1)
    habit_cdf[:, -1] = 1.0
    favourites = customers.favourites[customer]
    habit = customers.habit[customer]
    group = mission * N_PRICE_BANDS + customers.price_band[customer]

    for position in range(width):
        pending = np.flatnonzero(lines > position)
        for _ in range(MAX_REDRAWS):
            if len(pending) == 0:
                break
            uniform = rng.random((3, len(pending)))
            is_complement = (n_partners[pending] > 0) & (uniform[0] < COMPLEMENT_WEIGHT)
            is_habit = ~is_complement & (uniform[1] < habit[pending])
            choice = sample_explore(market, group[pending], uniform[2])
            chosen_source = np.full(len(pending), 2, dtype=np.int8)

            rows = pending[is_habit]
            slot = (uniform[2, is_habit, None] >= habit_cdf[rows, :-1]).sum(axis=1)
            choice[is_habit] = favourites[rows, slot]
            chosen_source[is_habit] = 1
            rows = pending[is_complement]
            slot = (uniform[2, is_complement] * n_partners[rows]).astype(np.int64)
            choice[is_complement] = partner_list[rows, slot]
            chosen_source[is_complement] = 0

            repeat = (items[pending, :position] == choice[:, None]).any(axis=1)
            accepted = pending[~repeat]
            items[accepted, position] = choice[~repeat]
            source[accepted, position] = chosen_source[~repeat]
            partner = catalogue.partner[choice[~repeat]]
            has_partner = partner >= 0
            with_partner = accepted[has_partner]
            partner_list[with_partner, n_partners[with_partner]] = partner[has_partner]
            n_partners[with_partner] += 1
            pending = pending[repeat]
        lines[pending] = position  # could not avoid repeats: the basket stops here
    return items, source, lines
