"""One tiny Stage 2 cache per session (generate -> prepare-samples -> prepare-tensor-cache, ~1 s)."""
from __future__ import annotations

import pytest
import torch

from retailsim.cli import main as retailsim_main


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    assert retailsim_main(["generate", "--out", str(root / "raw"), "--customers", "40", "--products", "60",
                           "--stores", "3", "--weeks", "8", "--seed", "3", "--quiet"]) == 0
    assert retailsim_main(["prepare-samples", "--input", str(root / "raw"), "--out", str(root / "samples"),
                           "--quiet"]) == 0
    assert retailsim_main(["prepare-tensor-cache", "--samples", str(root / "samples"), "--out",
                           str(root / "cache"), "--quiet"]) == 0
    return root / "cache"


@pytest.fixture
def tiny_model_factory():
    """build_world_model with the tiny preset whatever the caller asks (tests stay fast)."""
    from retailsim.train.trainer import build_world_model

    def factory(preset, data, gradient_checkpointing, config=None, **overrides):
        return build_world_model("tiny", data, gradient_checkpointing, config, **overrides)

    return factory


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny model runs 4-8x faster than with two threads on a shared 2-core machine, and
    the bit-for-bit comparisons do not depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
