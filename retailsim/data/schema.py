"""One source of truth for column names, label vocabularies and special token ids (SPEC 3.1, 3.3).

Every adapter produces the canonical transaction table described by ``CANONICAL_COLUMNS``; every later stage
reads column names, label maps and special ids from here.
"""
from __future__ import annotations

from dataclasses import dataclass

# --- canonical transaction table (one row per basket line) -------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float", "str"
    required: bool
    doc: str


CANONICAL_COLUMNS: tuple[Column, ...] = (
    Column("basket_id", "str", True, "one shopping trip"),
    Column("customer_id", "str", True, "shopper; null = anonymous (kept for the basket model, never for history)"),
    Column("product_id", "str", True, "SKU"),
    Column("week", "int", True, "ordinal shop week (1 = first week of the data)"),
    Column("weekday", "int", False, "0 = Monday .. 6 = Sunday"),
    Column("hour", "int", False, "0..23"),
    Column("quantity", "float", False, "units bought"),
    Column("spend", "float", False, "amount paid for the line"),
    Column("store_id", "str", False, "store"),
    Column("store_format", "str", False, "store format (LGSR: LS/MS/SS/XLS)"),
    Column("store_region", "str", False, "store region"),
    Column("category_1", "str", False, "product hierarchy, finest level"),
    Column("category_2", "str", False, "product hierarchy"),
    Column("category_3", "str", False, "product hierarchy"),
    Column("category_4", "str", False, "product hierarchy, coarsest level"),
    Column("customer_segment", "str", False, "lifestage (LGSR CUST_LIFESTAGE)"),
    Column("customer_price_band", "str", False, "LGSR CUST_PRICE_SENSITIVITY"),
    Column("basket_size", "str", False, "LGSR BASKET_SIZE (target only)"),
    Column("basket_price_band", "str", False, "LGSR BASKET_PRICE_SENSITIVITY (target only)"),
    Column("basket_type", "str", False, "LGSR BASKET_TYPE (target only)"),
    Column("basket_mission", "str", False, "LGSR BASKET_DOMINANT_MISSION (target only)"),
)
COLUMNS_BY_NAME = {column.name: column for column in CANONICAL_COLUMNS}
REQUIRED_COLUMNS = tuple(column.name for column in CANONICAL_COLUMNS if column.required)
HIERARCHY_COLUMNS = ("category_1", "category_2", "category_3", "category_4")
# Time columns a generic source may map instead of ``week``/``weekday``/``hour`` (``--map``); the adapter turns
# them into ordinal weeks: a datetime, or a per-customer order sequence (optionally with days since the last order).
SOURCE_TIME_COLUMNS = ("timestamp", "order_number", "days_since_prior_order")

# --- promotion plan (optional, beside the transactions) -----------------------------------------------------
# What a retailer knows before the week starts: one row per (product, week[, store][, customer]). Nothing in it
# may be derived from the transactions of the week it describes (the leakage rule: a plan is an input the
# retailer sets, never an outcome). A null store or customer means every store or every customer.

PROMOTION_COLUMNS: tuple[Column, ...] = (
    Column("product_id", "str", True, "SKU"),
    Column("week", "int", True, "ordinal shop week the plan is for (as the transactions' week)"),
    Column("store_id", "str", False, "store the plan holds in; null = every store"),
    Column("customer_id", "str", False, "holder of a targeted coupon; null = every customer"),
    Column("discount", "float", False, "planned fraction off the regular shelf price, in [0, 1)"),
    Column("price", "float", False, "planned shelf price"),
    Column("display", "int", False, "1 = on an in-store display"),
    Column("mailer", "int", False, "1 = in the week's mailer"),
    Column("coupon", "int", False, "1 = a coupon for the product is valid"),
)
PROMOTION_REQUIRED = tuple(column.name for column in PROMOTION_COLUMNS if column.required)
# The generator's plan file, next to its week files: PROD_CODE, SHOP_WEEK (YYYYWW), DISCOUNT, PRICE.
GENERATOR_PROMOTION_FILE = "promotions.parquet"

# --- LGSR weekly CSV files ----------------------------------------------------------------------------------

LGSR_FILE_GLOB = "transactions_*.csv"
LGSR_COLUMNS = (
    "SHOP_WEEK", "SHOP_DATE", "SHOP_WEEKDAY", "SHOP_HOUR", "QUANTITY", "SPEND", "PROD_CODE",
    "PROD_CODE_10", "PROD_CODE_20", "PROD_CODE_30", "PROD_CODE_40", "CUST_CODE", "CUST_PRICE_SENSITIVITY",
    "CUST_LIFESTAGE", "BASKET_ID", "BASKET_SIZE", "BASKET_PRICE_SENSITIVITY", "BASKET_TYPE",
    "BASKET_DOMINANT_MISSION", "STORE_CODE", "STORE_FORMAT", "STORE_REGION",
)
# LGSR column -> canonical column (SHOP_WEEK is YYYYWW and becomes an ordinal week; SHOP_DATE is YYYYMMDD;
# SHOP_WEEKDAY is 1 = Sunday .. 7 = Saturday in LGSR).
LGSR_TO_CANONICAL = {
    "BASKET_ID": "basket_id",
    "CUST_CODE": "customer_id",
    "PROD_CODE": "product_id",
    "SHOP_HOUR": "hour",
    "QUANTITY": "quantity",
    "SPEND": "spend",
    "STORE_CODE": "store_id",
    "STORE_FORMAT": "store_format",
    "STORE_REGION": "store_region",
    "PROD_CODE_10": "category_1",
    "PROD_CODE_20": "category_2",
    "PROD_CODE_30": "category_3",
    "PROD_CODE_40": "category_4",
    "CUST_LIFESTAGE": "customer_segment",
    "CUST_PRICE_SENSITIVITY": "customer_price_band",
    "BASKET_SIZE": "basket_size",
    "BASKET_PRICE_SENSITIVITY": "basket_price_band",
    "BASKET_TYPE": "basket_type",
    "BASKET_DOMINANT_MISSION": "basket_mission",
}

# --- label vocabularies (index 0 = unknown; LGSR writes unknown as "XX") -----------------------------------

UNKNOWN_LABEL = "XX"
LABELS: dict[str, tuple[str, ...]] = {
    "basket_size": (UNKNOWN_LABEL, "S", "M", "L"),
    "basket_price_band": (UNKNOWN_LABEL, "LA", "MM", "UM"),
    "basket_type": (UNKNOWN_LABEL, "Small Shop", "Top Up", "Full Shop"),
    "basket_mission": (UNKNOWN_LABEL, "Fresh", "Grocery", "Mixed", "Non Food"),
    "customer_price_band": (UNKNOWN_LABEL, "LA", "MM", "UM"),
    "customer_segment": (
        UNKNOWN_LABEL, "YA", "OA", "YF", "OF", "PE", "OT",
    ),  # LGSR lifestages: young/older adults, young/older families, pensioners, other
    "store_format": (UNKNOWN_LABEL, "LS", "MS", "SS", "XLS"),
}
LABEL_TARGETS = ("basket_size", "basket_price_band", "basket_type", "basket_mission")
UNKNOWN_LABEL_ID = 0  # ignored by the auxiliary losses and metrics


def label_id(column: str, value: str | None) -> int:
    """Index of ``value`` in ``LABELS[column]``; unknown, missing or unlisted values map to 0."""
    if value is None:
        return UNKNOWN_LABEL_ID
    try:
        return LABELS[column].index(value)
    except ValueError:
        return UNKNOWN_LABEL_ID


# --- product vocabulary (SPEC 3.3) --------------------------------------------------------------------------

PAD_ID = 0
DEFAULT_N_PRODUCTS = 5000


def unk_id(n_products: int) -> int:
    """Rare or unseen products."""
    return n_products + 1


def mask_id(n_products: int) -> int:
    return n_products + 2


def vocab_size(n_products: int) -> int:
    """Number of product logits: PAD, N products, UNK, MASK."""
    return n_products + 3


# Customers and stores: id 0 is "unknown/anonymous", never a real one's.
UNKNOWN_CUSTOMER_ID = 0
UNKNOWN_STORE_ID = 0

# --- temporal split (SPEC 3.3) ------------------------------------------------------------------------------

LGSR_SPLIT_WEEKS = (80, 95)  # weeks 1-80 train, 81-95 validation, 96-117 test
SPLIT_FRACTIONS = (0.68, 0.13)  # train, validation; the rest is test
SPLITS = ("train", "validation", "test")
# Longest ordinal week span a source may have: about 38 years of weekly data, far beyond any retail log. Every
# stage walks weeks 1..n_weeks one by one (empty ones included) and the samples and tensor cache store weeks as
# int16 (at most 32767), so a stray value (week 100000000, a timestamp read as a week number) must be refused
# before that walk, not spun through.
MAX_WEEKS = 2000
MAX_BASKET_ITEMS = 50  # longer baskets are truncated (SPEC 3.6)

# --- customer buckets of the evaluation (SPEC 5): the customer's baskets before this one --------------------

PRIOR_BUCKETS = ("prior_0", "prior_1_4", "prior_5_19", "prior_20_plus")
PRIOR_BUCKET_EDGES = (1, 5, 20)  # bucket = number of edges <= prior basket count


def prior_bucket(prior_baskets):
    """Index into PRIOR_BUCKETS of a prior basket count (int or NumPy array)."""
    import numpy as np

    return np.searchsorted(np.asarray(PRIOR_BUCKET_EDGES), prior_baskets, side="right")


def split_boundaries(n_weeks: int) -> tuple[int, int]:
    """(last training week, last validation week) for ordinal weeks 1..n_weeks under the default split.

    117 weeks (LGSR) gives (80, 95), as SPEC 3.3 sets; other lengths keep the same 68% / 13% / 19% shares.
    """
    if n_weeks < 3:
        raise ValueError(f"a temporal split needs at least 3 weeks of data, got {n_weeks}.")
    train_end = max(1, min(n_weeks - 2, round(n_weeks * SPLIT_FRACTIONS[0])))
    validation_end = max(train_end + 1, min(n_weeks - 1, round(n_weeks * sum(SPLIT_FRACTIONS))))
    return train_end, validation_end
