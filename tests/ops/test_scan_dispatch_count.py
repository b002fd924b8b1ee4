"""The PyTorch path of the scan is what Apple MPS runs, and MPS is launch-bound: a forward+backward must
dispatch fewer ops than the step-by-step reference does (counted with a dispatch mode, as the kernel report
counts launches), at a shape with several chunks."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from retailsim.ops import selective_scan, set_backend
from retailsim.ops.selective_scan import torch_scan
from retailsim.ops.selective_scan.reference import selective_scan_ref


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _dispatched(fn, inputs) -> int:
    with _Count() as count:
        out = fn(**inputs, delta_softplus=True)
        torch.autograd.grad(out, list(inputs.values()), torch.ones_like(out))
    return count.ops


def test_torch_path_dispatches_fewer_ops_than_the_step_by_step_loop(monkeypatch):
    monkeypatch.setattr(torch_scan, "CHUNK_ELEMENTS", 2 * 16 * 4 * 40)  # 40-step chunks: 4 of them at L = 150
    set_backend("torch")
    gen = torch.Generator().manual_seed(9)
    b, d, length, n = 2, 16, 150, 4

    def randn(*shape):
        return torch.randn(*shape, generator=gen).requires_grad_()

    inputs = dict(u=randn(b, d, length), delta=randn(b, d, length),
                  A=(-torch.rand(d, n, generator=gen) - 0.5).requires_grad_(), B=randn(b, n, length),
                  C=randn(b, n, length), D=randn(d), z=randn(b, d, length), delta_bias=randn(d))
    ours, reference = _dispatched(selective_scan, inputs), _dispatched(selective_scan_ref, inputs)
    assert torch_scan.chunk_length(b, d, n, length) == 40
    assert ours < 0.75 * reference, (ours, reference)
