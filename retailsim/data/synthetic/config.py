"""What the user chooses (sizes, seed) and the random streams derived from it.

Every random draw comes from a stream keyed by ``(seed, purpose, ...)``: the latent state has its own streams,
and each week draws from streams keyed by its index, so a week's content depends on the seed and the sizes only,
never on how the run was chunked or how many weeks came before it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retailsim.errors import RetailSimInputError

# Stream purposes (the second word of every stream key).
STREAM_CATALOGUE = 1
STREAM_STORES = 2
STREAM_CUSTOMERS = 3
STREAM_FAVOURITES = 4
STREAM_WEEK_MARKET = 5
STREAM_WEEK_TRIPS = 6
STREAM_WEEK_SLOTS = 7
STREAM_WEEK_LINES = 8


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream for one purpose (and week, chunk, ...) of one seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the synthetic world. Defaults are the `make demo` size (seconds to generate)."""

    customers: int = 2000
    products: int = 800
    stores: int = 30
    weeks: int = 60
    seed: int = 0

    # argument -> (smallest, largest) accepted value
    LIMITS = {
        "customers": (1, 50_000_000),
        "products": (50, 1_000_000),
        "stores": (1, 100_000),
        "weeks": (3, 1040),  # the temporal split needs 3 weeks; 1040 weeks = 20 years
        "seed": (0, 2**63 - 1),
    }

    def validate(self) -> "GeneratorConfig":
        for name, (low, high) in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise RetailSimInputError(f"--{name} must be an integer, got {value!r}.")
            if not low <= value <= high:
                raise RetailSimInputError(f"--{name} must be between {low:,} and {high:,}, got {value:,}.")
        return self

    def as_dict(self) -> dict:
        return asdict(self)
