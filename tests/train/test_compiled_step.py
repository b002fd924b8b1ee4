"""torch.compile(WorldModel, fullgraph=True) on the CPU: the scan and the causal conv run as custom ops, so
the model traces as one graph, and a training step (compiled forward, the loss, backward) gives eager's loss
and gradients. ``aot_eager`` traces exactly what inductor would (fake tensors through the custom ops' fake
implementations) without spending minutes of C++ compilation on a 2-core machine."""
from __future__ import annotations

import pytest
import torch

from retailsim.data.loader import make_loader
from retailsim.ops import set_backend
from retailsim.ops.selective_scan.function import native_launchers
from retailsim.train.loss import WorldModelLoss

CPU_BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    native_launchers() is None, reason="retailsim._native is not built (or RETAILSIM_NATIVE=0)"))]


def _step(forward, model, batch):
    model.zero_grad(set_to_none=True)
    total, _ = WorldModelLoss()(model, batch, forward(batch))
    total.backward()
    return total.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_compiled_world_model_training_step_matches_eager(tiny_cache, tiny_model_factory, backend_name):
    set_backend(backend_name)
    torch.manual_seed(4)
    model = tiny_model_factory("tiny", tiny_cache, False)
    with torch.no_grad():
        model.copy_query.weight.normal_()  # zero at init: give the pointer's parameters a gradient
    batch = next(iter(make_loader(tiny_cache, "train", batch_size=8, seed=2)))
    eager_loss, eager_grads = _step(model, model, batch)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # a graph break raises
    compiled_loss, compiled_grads = _step(compiled, model, batch)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) > 10
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
