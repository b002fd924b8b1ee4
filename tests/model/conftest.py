"""Shared inputs of the model tests: one small generated tensor cache per session (the batching tests' own, so a
whole-suite run builds it once), its data sizes, and a helper that builds a model on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retailsim.data.batching import CollateArrays, collate
from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache, product_category_from_cache
from tests.data.batching_fixtures import small_cache


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return small_cache(tmp_path_factory)


@pytest.fixture(scope="session")
def data_sizes(model_cache):
    return data_sizes_from_cache(model_cache)


@pytest.fixture(scope="session")
def train_arrays(model_cache):
    return CollateArrays.from_cache(model_cache, "train")


@pytest.fixture(scope="session")
def test_arrays(model_cache):
    return CollateArrays.from_cache(model_cache, "test")


@pytest.fixture(scope="session")
def make_model(model_cache, data_sizes):
    """make_model(preset, seed=0, **overrides) -> WorldModel on the session cache, in eval mode."""
    category = product_category_from_cache(model_cache)

    def build(preset: str = "tiny", seed: int = 0, **overrides) -> WorldModel:
        torch.manual_seed(seed)
        model = WorldModel(WorldModelConfig.from_name(preset, **{**data_sizes, **overrides}), category)
        return model.eval()

    return build


def mixed_samples(arrays: CollateArrays, n: int = 24) -> np.ndarray:
    """Rows of a split that include anonymous customers, cold-start customers (no training id, or no prior
    baskets) and regulars."""
    customer, key, prior = (np.asarray(arrays.basket[name]) for name in ("customer_id", "customer_key",
                                                                           "prior_baskets"))
    picks = [np.flatnonzero(key == 0)[:4], np.flatnonzero((key > 0) & ((customer == 0) | (prior == 0)))[:4],
             np.flatnonzero(prior >= 5)[: n - 8]]
    samples = np.concatenate(picks)
    assert len(samples) >= 12, "the session cache lacks anonymous, new or regular customers"
    return samples


def eval_batch(arrays: CollateArrays, samples, seed: int = 3):
    return collate(arrays, samples, seed=seed, train=False)
