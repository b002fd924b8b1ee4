"""``WorldModelConfig``: every size of the model in one validated dataclass (SPEC 4), saved whole in checkpoints.

Presets by name (``WorldModelConfig.from_name("tiny" | "small" | "default", **data_sizes)``) fix the model's
widths; the data sizes (vocabulary, hierarchy, stores, ...) come from the tensor cache through
:func:`data_sizes_from_cache`. Every field is a plain Python value (int, float, bool, str, list of int), so
``WorldModelConfig(**dataclasses.asdict(config))`` round-trips through a ``weights_only=True`` checkpoint.

Widths of the default preset (SPEC 3.5, 4): context token = fusion of T1 customer 192 + T3 time 64 + T5 store 96
+ T6 trip 48 = 400 → 512; basket token = fusion of T2 product 256 + T4 price 64 = 320 → 512.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from retailsim.data import schema
from retailsim.data.promotions import DEFAULT_MAX_PROMOTIONS
from retailsim.errors import RetailSimInputError

# Data-set sizes a config needs; data_sizes_from_cache returns exactly these keys.
DATA_SIZE_FIELDS = ("vocab_size", "category_sizes", "n_stores", "n_store_regions")
# Switches removed after their experiments (docs/experiments.md): a saved config may still name them, at the
# one value the model now has; any other value was a model this version cannot build.
RETIRED_FIELDS = {"tie_output": False, "copy_key": "category"}


@dataclass
class WorldModelConfig:
    """Sizes and switches of :class:`retailsim.model.WorldModel` (ids: see retailsim.data.schema)."""

    # --- data sizes (from the tensor cache) ---
    vocab_size: int = schema.vocab_size(schema.DEFAULT_N_PRODUCTS)  # PAD, products, UNK, MASK
    category_sizes: list[int] = field(default_factory=lambda: [1001, 251, 91, 11])  # ids per hierarchy level, 0 = unknown
    n_stores: int = 1001     # store ids incl. 0 = unknown
    n_store_regions: int = 101  # region ids incl. 0 = unknown
    # --- token widths ---
    d_model: int = 512
    d_customer: int = 192    # T1
    d_product: int = 256     # T2
    d_time: int = 64         # T3
    d_price: int = 64        # T4
    d_store: int = 96        # T5
    d_trip: int = 48         # T6
    n_fourier: int = 8       # harmonics per periodic input (T3, T4, history ages)
    # --- history encoder (Mamba) ---
    max_history: int = 256
    n_mamba_layers: int = 4
    mamba_expand: int = 2    # d_inner = expand * d_model
    d_state: int = 16
    d_conv: int = 4
    dt_rank: int = 0         # 0 = ceil(d_model / 16), resolved in __post_init__
    # --- basket decoder ---
    n_decoder_layers: int = 2
    n_heads: int = 8
    d_ffn: int = 2048
    dropout: float = 0.1
    # --- heads ---
    copy_head: bool = True   # pointer scores over the history join the catalogue softmax (world_model.py)
    d_copy: int = 64         # query/key width of the copy head
    copy_count: bool = True  # the log of how often the purchase's product occurs in the window joins its score
    condition_on_mission: bool = False  # simulation: a given basket_mission is an input, its head is off
    promotions: bool = False  # the week's promoted products' logits get a learned lift (world_model.py)
    max_promotions: int = DEFAULT_MAX_PROMOTIONS  # promoted products per basket the model reads, at most
    # --- training switches ---
    gradient_checkpointing: bool = False
    preset: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.category_sizes, tuple):
            self.category_sizes = list(self.category_sizes)
        if self.dt_rank == 0 and isinstance(self.d_model, int) and self.d_model > 0:
            self.dt_rank = math.ceil(self.d_model / 16)
        self.validate()

    # ---------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise RetailSimInputError naming the first field whose value cannot build a model."""
        positive = ("vocab_size", "n_stores", "n_store_regions", "d_model", "d_customer", "d_product", "d_time",
                    "d_price", "d_store", "d_trip", "n_fourier", "max_history", "n_mamba_layers", "mamba_expand",
                    "d_state", "d_conv", "dt_rank", "n_decoder_layers", "n_heads", "d_ffn", "d_copy",
                    "max_promotions")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RetailSimInputError(f"WorldModelConfig.{name} must be a positive integer, got {value!r}.")
        if self.vocab_size < 4:
            raise RetailSimInputError(f"WorldModelConfig.vocab_size must be at least 4 (PAD, one product, UNK, "
                                      f"MASK), got {self.vocab_size}.")
        sizes = self.category_sizes
        if (not isinstance(sizes, list) or len(sizes) != len(schema.HIERARCHY_COLUMNS)
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)):
            raise RetailSimInputError(f"WorldModelConfig.category_sizes must be {len(schema.HIERARCHY_COLUMNS)} "
                                      f"positive integers (ids per hierarchy level, finest first), got {sizes!r}.")
        if self.d_model % self.n_heads:
            raise RetailSimInputError(f"WorldModelConfig.n_heads ({self.n_heads}) must divide d_model "
                                      f"({self.d_model}).")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise RetailSimInputError(f"WorldModelConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        for name in ("copy_head", "copy_count", "condition_on_mission", "promotions", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise RetailSimInputError(f"WorldModelConfig.{name} must be True or False, got "
                                          f"{getattr(self, name)!r}.")
        if not isinstance(self.preset, str):
            raise RetailSimInputError(f"WorldModelConfig.preset must be a string, got {self.preset!r}.")

    # ---------------------------------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        return self.mamba_expand * self.d_model

    @property
    def n_products(self) -> int:
        return self.vocab_size - 3

    @property
    def mask_id(self) -> int:
        return schema.mask_id(self.n_products)

    @property
    def n_history_categories(self) -> int:
        """Width C of Batch.history_category_shares: ids of the coarsest hierarchy level."""
        return self.category_sizes[-1]

    @property
    def aux_heads(self) -> tuple[str, ...]:
        """The label heads that are on (schema.LABEL_TARGETS order)."""
        return tuple(n for n in schema.LABEL_TARGETS if not (self.condition_on_mission and n == "basket_mission"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "WorldModelConfig":
        """The config saved by ``to_dict`` (a checkpoint's ``config``); unknown keys are an error."""
        values = dict(values)
        values.setdefault("promotions", False)  # saved before the promotion lift existed: a model without it
        for name, only in RETIRED_FIELDS.items():
            if name in values and values.pop(name) != only:
                raise RetailSimInputError(f"WorldModelConfig.{name} was removed (only {name}={only!r} remains); "
                                          f"this checkpoint needs an older version of retailsim.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RetailSimInputError(f"unknown WorldModelConfig field(s) {', '.join(unknown)} (a checkpoint from "
                                      f"another version?).")
        return cls(**values)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "WorldModelConfig":
        """A preset ("tiny", "small", "default") with data sizes (and any other field) overridden."""
        if name not in PRESETS:
            raise RetailSimInputError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RetailSimInputError(f"unknown WorldModelConfig field(s): {', '.join(unknown)}.")
        return cls(**{**PRESETS[name], "preset": name, **overrides})


PRESETS: dict[str, dict] = {
    # Fast tests: every part present once, minimal widths.
    "tiny": dict(d_model=32, d_customer=16, d_product=32, d_time=8, d_price=8, d_store=8, d_trip=8, n_fourier=4,
                 n_mamba_layers=1, d_state=8, n_decoder_layers=1, n_heads=2, d_ffn=64, dropout=0.0),
    # CPU training in the demo (minutes on 2 cores).
    "small": dict(d_model=128, d_customer=48, d_product=96, d_time=16, d_price=16, d_store=24, d_trip=16,
                  n_fourier=6, n_mamba_layers=2, d_state=16, n_decoder_layers=2, n_heads=4, d_ffn=512, dropout=0.1),
    # SPEC 4: ~23M parameters at vocab_size 5003.
    "default": {},
}


def data_sizes_from_cache(cache_dir) -> dict:
    """``{vocab_size, category_sizes, n_stores, n_store_regions}`` of a tensor cache, for ``from_name``.

    Sizes are embedding rows (id 0 = unknown) from the manifest and vocab.json; the cache reader guarantees every
    id of every split fits them (a larger id is a damaged cache, refused, not an embedding grown to fit it).
    """
    from retailsim.data.cache_reader import TensorCache

    cache = TensorCache.open(cache_dir)
    for split in schema.SPLITS:
        cache.check_ids(split)
    return cache.data_sizes()


def product_category_from_cache(cache_dir) -> np.ndarray:
    """int64 [vocab_size, 4]: hierarchy ids of each product id (the model's ``product_category`` buffer)."""
    from retailsim.data.cache_reader import TensorCache

    return TensorCache.open(cache_dir).product_category()


def product_counts_from_cache(cache_dir) -> np.ndarray:
    """int64 [vocab_size]: training baskets holding each product id (UNK: the rare products together; PAD and
    MASK 0), counted by Stage 1 over the training weeks only, freshly loaded on every call. Read by
    ``WorldModel.init_output_bias`` and the popularity baseline."""
    from retailsim.data.cache_reader import TensorCache

    return TensorCache.open(cache_dir).product_counts()
