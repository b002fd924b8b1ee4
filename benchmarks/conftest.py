"""Benchmark options: ``--device cpu|cuda|mps`` picks where everything runs; ``--quick`` shrinks every shape
so the whole suite can be dry-run (the Triton parts through the Triton interpreter) on a CPU machine."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="device to benchmark on")
    parser.addoption("--quick", action="store_true", help="tiny shapes, for a dry run of the suite")


def pytest_configure(config):
    # The interpreter must be chosen before Triton is imported; only a quick CPU dry run wants it.
    if config.getoption("--quick") and config.getoption("--device") == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device(pytestconfig):
    import torch

    name = pytestconfig.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda but no CUDA GPU is visible")
    if name == "mps" and not torch.backends.mps.is_available():
        pytest.skip("--device mps but MPS is not available")
    return torch.device(name)


@pytest.fixture(scope="session")
def quick(pytestconfig):
    return bool(pytestconfig.getoption("--quick"))
