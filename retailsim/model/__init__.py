"""The world model (SPEC 4): ``WorldModelConfig`` (presets), ``WorldModel`` and its ``WorldModelOutput``."""
from retailsim.model.config import (PRESETS, WorldModelConfig, data_sizes_from_cache,
                                    product_category_from_cache, product_counts_from_cache)
from retailsim.model.output import WorldModelOutput
from retailsim.model.world_model import WorldModel

__all__ = ["PRESETS", "WorldModel", "WorldModelConfig", "WorldModelOutput", "data_sizes_from_cache",
           "product_category_from_cache", "product_counts_from_cache"]
