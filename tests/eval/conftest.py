"""Shared inputs of the evaluation tests: the session's small generated cache (with its ground_truth.parquet) and
an untrained tiny-preset checkpoint on it, in the trainer's format."""
from __future__ import annotations

import pytest
import torch

from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache, product_category_from_cache
from retailsim.ops import set_backend
from tests.data.batching_fixtures import small_cache


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    return small_cache(tmp_path_factory)


def save_checkpoint(path, config: WorldModelConfig, state_dict: dict) -> None:
    torch.save({"epoch": 1, "global_step": 1, "model_state_dict": state_dict, "optimizer_state_dict": {},
                "scheduler_state_dict": {}, "best_val_loss": 1.0, "config": config.to_dict(), "rng_state": {}}, path)


@pytest.fixture(scope="session")
def tiny_checkpoint(eval_cache, tmp_path_factory):
    torch.manual_seed(0)
    config = WorldModelConfig.from_name("tiny", **data_sizes_from_cache(eval_cache))
    model = WorldModel(config, product_category=product_category_from_cache(eval_cache))
    path = tmp_path_factory.mktemp("eval_checkpoint") / "tiny.pt"
    save_checkpoint(path, config, model.state_dict())
    return path


@pytest.fixture(autouse=True)
def _torch_backend():
    set_backend("torch")  # the Triton interpreter is minutes here; backends are the ops tests' business
    yield
