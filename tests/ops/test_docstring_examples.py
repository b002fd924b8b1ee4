"""Every example in the public ops' docstrings runs as written (doctest), on the CPU backends."""
import doctest
import importlib

import pytest
import torch

MODULES = ["retailsim.ops.selective_scan", "retailsim.ops.focal_loss", "retailsim.ops.contrastive_loss",
           "retailsim.ops.causal_conv"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
