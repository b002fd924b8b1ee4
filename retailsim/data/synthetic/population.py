"""Stores (format, region) and customers (lifestage, price band, habits, trip rate, home store).

A customer's latent state is fixed for the whole run: price band (always LA/MM/UM; the written label is XX for a
few), lifestage, trip rate, the week they join, home store, their own mission leanings, a habit strength and a
ranked list of ``N_FAVOURITES`` favourite products with weights. Anonymous shoppers have the same latent state
but no loyalty card: their lines are written with an empty CUST_CODE and XX customer labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from retailsim.data import schema
from retailsim.data.synthetic.catalogue import Catalogue
from retailsim.data.synthetic.config import (
    STREAM_CUSTOMERS,
    STREAM_FAVOURITES,
    STREAM_STORES,
    GeneratorConfig,
    stream,
)
from retailsim.data.synthetic.market import N_PRICE_BANDS, PRICE_PREFERENCE
from retailsim.data.synthetic.missions import (
    CUSTOMER_MISSION_SPREAD,
    DOMINANT_BASE_LOGITS,
    LIFESTAGE_TYPE_LOGITS,
    TYPE_BASE_LOGITS,
)

STORE_FORMATS = schema.LABELS["store_format"][1:]  # LS, MS, SS, XLS
STORE_FORMAT_SHARE = (0.30, 0.25, 0.35, 0.10)
STORE_FORMAT_TRAFFIC = np.array([2.0, 1.5, 1.0, 3.0])  # relative number of shoppers per store
STORE_FORMAT_PRICE = np.array([1.00, 1.02, 1.06, 0.97])  # convenience stores charge a little more
REGIONS = ("E01", "E02", "E03", "N01", "N02", "N03", "S01", "S02", "S03", "W01", "W02")

LIFESTAGES = schema.LABELS["customer_segment"][1:]  # YA, OA, YF, OF, PE, OT
LIFESTAGE_SHARE = (0.15, 0.20, 0.15, 0.20, 0.20, 0.10)
PRICE_BANDS = schema.LABELS["customer_price_band"][1:]  # LA, MM, UM
PRICE_BAND_SHARE = (0.30, 0.45, 0.25)
assert len(PRICE_BANDS) == N_PRICE_BANDS

ANONYMOUS_SHARE = 0.15  # shoppers without a loyalty card
UNKNOWN_LIFESTAGE_SHARE = 0.03  # card holders whose written lifestage is XX
UNKNOWN_PRICE_BAND_SHARE = 0.02
LATE_JOINER_SHARE = 0.25  # customers whose first possible trip is after week 1 (cold starts in every split)
LATE_JOIN_MEAN_WEEKS = 40.0  # join weeks do not depend on --weeks: a longer run extends a shorter one
MEAN_TRIPS_PER_WEEK = 0.75  # a few trips a month
TRIP_RATE_SHAPE = 2.0
HOME_STORE_SHARE = 0.85
HABIT_BETA = (5.0, 5.0)  # habit strength: share of non-complement slots filled from the favourites
N_FAVOURITES = 20
FAVOURITE_DECAY = 0.9  # favourite r has weight ~ (r + 1) ** -decay
FAVOURITE_CHUNK = 8192  # customers per favourites draw (fixed: the draw must not depend on memory)


@dataclass
class Stores:
    n_stores: int
    format: np.ndarray  # int8 [K] index into STORE_FORMATS
    region: np.ndarray  # int8 [K] index into REGIONS
    traffic_cdf: np.ndarray  # float64 [K] where occasional shoppers go
    codes: pa.Array  # string [K] STORE_CODE


@dataclass
class Customers:
    n_customers: int
    anonymous: np.ndarray  # bool [C]
    lifestage: np.ndarray  # int8 [C] index into LIFESTAGES
    price_band: np.ndarray  # int8 [C] latent band, index into PRICE_BANDS
    trip_rate: np.ndarray  # float64 [C] expected trips per week
    join_week: np.ndarray  # int64 [C] first 0-based week with trips
    home_store: np.ndarray  # int32 [C]
    type_logits: np.ndarray  # float64 [C, 3] own leaning over trip types
    dominant_logits: np.ndarray  # float64 [C, 4] own leaning over dominant kinds
    habit: np.ndarray  # float64 [C] habit strength in (0, 1)
    favourites: np.ndarray  # int32 [C, F] favourite products, most liked first
    favourite_weight: np.ndarray  # float64 [C, F] rows sum to 1
    favourite_keys: np.ndarray  # int64 sorted customer * P + product over all favourites (oracle look-ups)
    favourite_key_weight: np.ndarray  # float64 weight of each sorted key
    codes: pa.Array  # string [C] CUST_CODE, null for anonymous shoppers
    lifestage_label: pa.Array  # string [C] CUST_LIFESTAGE as written (XX when unknown or anonymous)
    price_band_label: pa.Array  # string [C] CUST_PRICE_SENSITIVITY as written


def build_stores(config: GeneratorConfig) -> Stores:
    rng = stream(config.seed, STREAM_STORES)
    k = config.stores
    store_format = rng.choice(len(STORE_FORMATS), size=k, p=STORE_FORMAT_SHARE).astype(np.int8)
    region = rng.integers(0, len(REGIONS), size=k).astype(np.int8)
    traffic = STORE_FORMAT_TRAFFIC[store_format] * rng.uniform(0.7, 1.3, size=k)
    traffic_cdf = np.cumsum(traffic) / traffic.sum()
    traffic_cdf[-1] = 1.0
    codes = pa.array([f"STORE{index + 1:05d}" for index in range(k)], pa.string())
    return Stores(k, store_format, region, traffic_cdf, codes)


def build_customers(
    config: GeneratorConfig, catalogue: Catalogue, stores: Stores, progress: bool = False
) -> Customers:
    rng = stream(config.seed, STREAM_CUSTOMERS)
    c = config.customers
    anonymous = rng.random(c) < ANONYMOUS_SHARE
    lifestage = rng.choice(len(LIFESTAGES), size=c, p=LIFESTAGE_SHARE).astype(np.int8)
    price_band = rng.choice(N_PRICE_BANDS, size=c, p=PRICE_BAND_SHARE).astype(np.int8)
    trip_rate = rng.gamma(TRIP_RATE_SHAPE, MEAN_TRIPS_PER_WEEK / TRIP_RATE_SHAPE, size=c)
    late = rng.random(c) < LATE_JOINER_SHARE
    join_week = np.where(late, 1 + np.floor(rng.exponential(LATE_JOIN_MEAN_WEEKS, size=c)), 0).astype(np.int64)
    home_store = np.searchsorted(stores.traffic_cdf, rng.random(c), side="right").clip(0, stores.n_stores - 1)
    type_logits = (
        TYPE_BASE_LOGITS + LIFESTAGE_TYPE_LOGITS[lifestage] + CUSTOMER_MISSION_SPREAD * rng.standard_normal((c, 3))
    )
    dominant_logits = DOMINANT_BASE_LOGITS + CUSTOMER_MISSION_SPREAD * rng.standard_normal((c, 4))
    habit = rng.beta(*HABIT_BETA, size=c)
    lifestage_known = ~anonymous & (rng.random(c) >= UNKNOWN_LIFESTAGE_SHARE)
    band_known = ~anonymous & (rng.random(c) >= UNKNOWN_PRICE_BAND_SHARE)

    favourites, favourite_weight = _draw_favourites(config, catalogue, price_band, progress)
    keys = np.arange(c, dtype=np.int64)[:, None] * catalogue.n_products + favourites
    order = np.argsort(keys, axis=None, kind="stable")

    codes = pa.array([f"CUST{index + 1:010d}" for index in range(c)], pa.string())
    codes = pc.if_else(pa.array(anonymous), pa.scalar(None, pa.string()), codes)
    unknown = schema.UNKNOWN_LABEL
    lifestage_label = pa.array(
        np.where(lifestage_known, np.array(LIFESTAGES, dtype=object)[lifestage], unknown), pa.string()
    )
    price_band_label = pa.array(
        np.where(band_known, np.array(PRICE_BANDS, dtype=object)[price_band], unknown), pa.string()
    )
    return Customers(
        n_customers=c,
        anonymous=anonymous,
        lifestage=lifestage,
        price_band=price_band,
        trip_rate=trip_rate,
        join_week=join_week,
        home_store=home_store.astype(np.int32),
        type_logits=type_logits,
        dominant_logits=dominant_logits,
        habit=habit,
        favourites=favourites,
        favourite_weight=favourite_weight,
        favourite_keys=keys.ravel()[order],
        favourite_key_weight=favourite_weight.ravel()[order],
        codes=codes,
        lifestage_label=lifestage_label,
        price_band_label=price_band_label,
    )


def _draw_favourites(
    config: GeneratorConfig, catalogue: Catalogue, price_band: np.ndarray, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's favourites: the top of popularity + price preference + Gumbel noise (sampling without
    replacement, proportional to the explore weights of their band), ranked, with Zipf-like weights."""
    c, n = config.customers, catalogue.n_products
    f = min(N_FAVOURITES, n)
    base = catalogue.popularity[None, :] + PRICE_PREFERENCE[:, catalogue.tier]  # [bands, P]
    favourites = np.empty((c, f), dtype=np.int32)
    weight = np.empty((c, f))
    starts = range(0, c, FAVOURITE_CHUNK)
    bar = tqdm(starts, desc="customers' favourites", unit="chunk", disable=not progress or len(starts) < 8)
    for chunk, start in enumerate(bar):
        rng = stream(config.seed, STREAM_FAVOURITES, chunk)
        stop = min(c, start + FAVOURITE_CHUNK)
        keys = base[price_band[start:stop]] + rng.gumbel(size=(stop - start, n))
        top = np.argpartition(-keys, f - 1, axis=1)[:, :f]
        ranked = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        favourites[start:stop] = ranked
        raw = (np.arange(f) + 1.0) ** -FAVOURITE_DECAY * np.exp(0.3 * rng.standard_normal((stop - start, f)))
        weight[start:stop] = raw / raw.sum(axis=1, keepdims=True)
    return favourites, weight
