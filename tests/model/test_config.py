"""WorldModelConfig: presets, the default's size, validation messages, round trips, sizes read from a cache."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from retailsim.data import schema
from retailsim.errors import RetailSimInputError
from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache
from retailsim.model.config import PRESETS

DEFAULT_PARAMS = 23_000_000


def test_default_preset_is_about_23M_parameters_at_vocab_5003():
    config = WorldModelConfig.from_name("default", vocab_size=5003)
    assert (config.d_model, config.n_mamba_layers, config.n_decoder_layers, config.d_ffn, config.n_heads) == (
        512, 4, 2, 2048, 8)
    assert (config.d_inner, config.d_state, config.d_conv, config.dt_rank) == (1024, 16, 4, 32)
    assert config.d_customer + config.d_time + config.d_store + config.d_trip == 400  # context fusion 400 -> 512
    assert config.d_product + config.d_price == 320                                  # product fusion 320 -> 512
    n = WorldModel(config).num_parameters()
    assert abs(n - DEFAULT_PARAMS) <= 0.10 * DEFAULT_PARAMS, f"{n:,} parameters"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_asdict_and_a_weights_only_checkpoint(name):
    config = WorldModelConfig.from_name(name, vocab_size=203, category_sizes=[31, 9, 5, 3], n_stores=7,
                                        n_store_regions=4)
    values = dataclasses.asdict(config)
    assert all(isinstance(v, (int, float, bool, str, list)) for v in values.values())
    assert WorldModelConfig(**values) == config
    buffer = io.BytesIO()
    torch.save({"config": values}, buffer)
    buffer.seek(0)
    assert WorldModelConfig.from_dict(torch.load(buffer, weights_only=True)["config"]) == config
    assert config.preset == name


def test_tiny_and_small_sizes():
    tiny, small = WorldModelConfig.from_name("tiny"), WorldModelConfig.from_name("small")
    assert 32 <= tiny.d_model <= 64 and tiny.n_mamba_layers == 1 and tiny.n_decoder_layers == 1
    assert 128 <= small.d_model <= 192 and small.n_mamba_layers == 2 and small.n_decoder_layers == 2
    assert WorldModel(tiny).num_parameters() < WorldModel(small).num_parameters()


BAD_VALUES = [
    ("d_model", 0), ("d_model", 3.5), ("n_heads", 3), ("vocab_size", 2), ("dropout", 1.0), ("dropout", -0.1),
    ("category_sizes", [10, 5]), ("category_sizes", [10, 5, 0, 2]), ("n_mamba_layers", -1), ("d_state", True),
    ("copy_head", "yes"), ("gradient_checkpointing", 1), ("max_history", 0), ("copy_count", "no"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_validation_error_names_the_field(field, value):
    with pytest.raises(RetailSimInputError, match=field) as info:
        WorldModelConfig.from_name("tiny", **{field: value})
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_a_saved_config_may_name_a_retired_switch_at_its_remaining_value_only():
    saved = WorldModelConfig.from_name("tiny").to_dict()
    assert WorldModelConfig.from_dict({**saved, "tie_output": False, "copy_key": "category"}).to_dict() == saved
    for field, value in (("tie_output", True), ("copy_key", "history")):
        with pytest.raises(RetailSimInputError, match=f"WorldModelConfig.{field} was removed"):
            WorldModelConfig.from_dict({**saved, field: value})
    with pytest.raises(RetailSimInputError, match="unknown WorldModelConfig field"):
        WorldModelConfig.from_name("tiny", tie_output=False)  # not a field any more


def test_unknown_preset_and_unknown_fields_are_clear_errors():
    with pytest.raises(RetailSimInputError, match="preset must be one of tiny, small, default"):
        WorldModelConfig.from_name("huge")
    with pytest.raises(RetailSimInputError, match="d_modle"):
        WorldModelConfig.from_name("tiny", d_modle=64)
    with pytest.raises(RetailSimInputError, match="n_layer"):
        WorldModelConfig.from_dict({**WorldModelConfig().to_dict(), "n_layer": 3})


def test_mission_conditioning_turns_its_head_off():
    assert WorldModelConfig().aux_heads == schema.LABEL_TARGETS
    config = WorldModelConfig.from_name("tiny", condition_on_mission=True)
    assert "basket_mission" not in config.aux_heads and len(config.aux_heads) == len(schema.LABEL_TARGETS) - 1


def test_data_sizes_from_cache_cover_every_id_of_every_split(model_cache, data_sizes):
    from retailsim.data.cache_reader import TensorCache

    assert set(data_sizes) == {"vocab_size", "category_sizes", "n_stores", "n_store_regions"}
    for split in schema.SPLITS:
        arrays = TensorCache.open(model_cache).split_arrays(split)
        assert data_sizes["vocab_size"] == len(arrays["product_category"])
        assert (np.asarray(arrays["product_category"]).max(0) < data_sizes["category_sizes"]).all()
        assert np.asarray(arrays["store_id"]).max() < data_sizes["n_stores"]
        assert np.asarray(arrays["store_region"]).max() < data_sizes["n_store_regions"]
        assert np.asarray(arrays["item_ids"]).max() < data_sizes["vocab_size"] - 1  # below MASK
    assert WorldModelConfig.from_name("tiny", **data_sizes).vocab_size == data_sizes["vocab_size"]


def test_data_sizes_from_a_folder_without_cache_is_a_clear_error(tmp_path):
    with pytest.raises(RetailSimInputError, match="no cache.json"):
        data_sizes_from_cache(tmp_path)


def test_a_config_saved_before_the_promotion_lift_builds_the_model_without_it():
    saved = WorldModelConfig.from_name("tiny", promotions=True).to_dict()
    assert WorldModelConfig.from_dict(saved).promotions is True
    assert WorldModelConfig.from_name("tiny").promotions is False      # opt-in (README: not yet a default)
    del saved["promotions"]
    assert WorldModelConfig.from_dict(saved).promotions is False
    with pytest.raises(RetailSimInputError, match="max_promotions"):
        WorldModelConfig.from_name("tiny", max_promotions=0)
