"""Test set-up. Without a CUDA GPU the Triton kernels run through the Triton interpreter, which must be
switched on before anything imports Triton, hence before torch is imported here."""
import os
import shutil

if shutil.which("nvidia-smi") is None and os.environ.get("RETAILSIM_TEST_NO_INTERPRET") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _restore_backend():
    """Tests that call set_backend must not leak their choice into the next test."""
    from retailsim.ops import backend

    yield
    backend.set_backend(None)


@pytest.fixture
def cpu_threads_one():
    """Pins torch to one thread for tests whose numbers must not depend on the machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
