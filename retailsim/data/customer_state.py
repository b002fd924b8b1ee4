"""Per-customer running state of Stage 1 pass 2: what is known about a named customer before each basket.

Baskets are fed one week at a time in time order. For each basket the features use only the customer's
earlier baskets (any split): prior basket count, mean size of the prior baskets, days since the previous trip,
trips earlier this week, and whether the store differs from the previous trip's. Anonymous baskets (key 0)
get zeros and never change any state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TripFeatures:
    prior_baskets: np.ndarray  # int32 [n]
    prior_mean_basket_size: np.ndarray  # float32 [n], 0 without prior baskets
    has_previous: np.ndarray  # int8 [n]
    days_since_previous: np.ndarray  # float32 [n], 0 without a previous trip
    trips_this_week: np.ndarray  # int16 [n]: the customer's earlier baskets in the same week
    store_switch: np.ndarray  # int8 [n]: 1 when the previous trip was in another store


class CustomerState:
    def __init__(self) -> None:
        self.prior = np.zeros(1, np.int64)
        self.size_sum = np.zeros(1, np.float64)
        self.last_time = np.zeros(1, np.float64)
        self.last_store = np.zeros(1, np.int64)
        self.last_week = np.zeros(1, np.int64)
        self.week_trips = np.zeros(1, np.int64)

    def _grow(self, n_keys: int) -> None:
        if n_keys <= len(self.prior):
            return
        size = max(n_keys, 2 * len(self.prior))
        for name in ("prior", "size_sum", "last_time", "last_store", "last_week", "week_trips"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def step(self, week: int, key: np.ndarray, time_days: np.ndarray, store: np.ndarray, size: np.ndarray) -> TripFeatures:
        """Features of one week's baskets (given in time order), then fold them into the state.

        key: int64 [n] customer key, 0 = anonymous; time_days: float64 [n]; store: int64 [n]; size: [n] items.
        """
        n = len(key)
        self._grow(int(key.max(initial=0)) + 1)
        out = TripFeatures(
            prior_baskets=np.zeros(n, np.int32),
            prior_mean_basket_size=np.zeros(n, np.float32),
            has_previous=np.zeros(n, np.int8),
            days_since_previous=np.zeros(n, np.float32),
            trips_this_week=np.zeros(n, np.int16),
            store_switch=np.zeros(n, np.int8),
        )
        named = np.flatnonzero(key > 0)
        if len(named) == 0:
            return out
        order = named[np.argsort(key[named], kind="stable")]  # by customer, time order kept inside
        k = key[order]
        first = np.ones(len(order), bool)
        first[1:] = k[1:] != k[:-1]
        group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = np.arange(len(order)) - group_start  # earlier baskets of the customer this week
        sizes = size[order].astype(np.float64)
        size_before = np.cumsum(sizes) - sizes
        size_before -= size_before[group_start]

        prior = self.prior[k] + rank
        previous_time = np.where(first, self.last_time[k], np.roll(time_days[order], 1))
        previous_store = np.where(first, self.last_store[k], np.roll(store[order], 1))
        has_previous = prior > 0
        same_week_before = np.where(self.last_week[k] == week, self.week_trips[k], 0)
        out.prior_baskets[order] = prior
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_size = (self.size_sum[k] + size_before) / prior
        out.prior_mean_basket_size[order] = np.where(has_previous, mean_size, 0.0)
        out.has_previous[order] = has_previous
        out.days_since_previous[order] = np.where(has_previous, time_days[order] - previous_time, 0.0)
        out.trips_this_week[order] = same_week_before + rank
        out.store_switch[order] = has_previous & (previous_store != store[order])

        last = np.ones(len(order), bool)
        last[:-1] = k[1:] != k[:-1]
        count_this_week = rank + 1
        self.size_sum[k[last]] += (size_before + sizes)[last]
        self.prior[k[last]] += count_this_week[last]
        self.week_trips[k[last]] = same_week_before[last] + count_this_week[last]
        self.last_week[k[last]] = week
        self.last_time[k[last]] = time_days[order][last]
        self.last_store[k[last]] = store[order][last]
        return out
