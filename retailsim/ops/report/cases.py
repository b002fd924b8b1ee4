"""The ops and shapes the kernel report judges: the benchmark shapes of SPEC 7, each with the inputs a
user's training step passes (every optional argument the model uses on), each op's launch budget, and the
question every op's Triton launcher answers, ``config_for(shape, dtype, arch)``: the report records its
answer and checks that the launches used exactly those tiles and warps."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from retailsim.ops import contrastive_loss, focal_loss, linear_focal_loss, selective_scan


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype
    make_inputs: Callable[[], tuple]
    call: Callable
    launch_budget: int   # launches per fwd+bwd the op declares (kernel report check)
    launcher: str = ""   # the module whose config_for answers for this op's Triton launches
    config_shape: tuple = ()  # the shape config_for is asked about (the op's own, or one row chunk's)

    def config_for(self, arch: str) -> dict:
        module = importlib.import_module(self.launcher)
        return module.config_for(self.config_shape or self.shape, self.dtype, arch)

    @property
    def label(self) -> str:
        return f"{self.op} {'x'.join(map(str, self.shape))} {str(self.dtype).removeprefix('torch.')}"


def _randn(*shape, dtype=torch.float32, grad=True):
    return torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=grad)


def _scan_case(shape, dtype) -> Case:
    """The scan as the Mamba mixer calls it: u from the causal conv (contiguous along L); Δ and z transposed
    views of the input projections and B, C of x_proj's output (contiguous along the channels / N)."""
    batch, dim, length, dstate = shape

    def make():
        return (_randn(batch, dim, length, dtype=dtype), _randn(batch, length, dim, dtype=dtype),
                _randn(dim, dstate), _randn(batch, length, dstate, dtype=dtype),
                _randn(batch, length, dstate, dtype=dtype), _randn(dim), _randn(batch, length, dim, dtype=dtype),
                _randn(dim))

    def call(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D=D,
                              z=z.transpose(1, 2), delta_bias=bias, delta_softplus=True)

    # 2 kernels, 5 sums, the 2 half-precision dB/dC casts and the forward's 2 casts of B, C to float32
    return Case("selective_scan", shape, dtype, make, call, launch_budget=11,
                launcher="retailsim.ops.selective_scan.triton")


def _focal_case(shape, dtype) -> Case:
    rows, vocab = shape

    def make():
        return _randn(rows, vocab, dtype=dtype), torch.randint(0, vocab, (rows,), device="cuda")

    return Case("focal_loss", shape, dtype, make, lambda logits, target: focal_loss(logits, target, gamma=2.0),
                launch_budget=3, launcher="retailsim.ops.focal_loss.triton")


def _linear_focal_case(shape, dtype) -> Case:
    rows, hidden, vocab = shape

    def make():
        return (_randn(rows, hidden, dtype=dtype), _randn(vocab, hidden, dtype=dtype),
                torch.randint(0, vocab, (rows,), device="cuda"))

    return Case("linear_focal_loss", shape, dtype, make,
                lambda h, w, target: linear_focal_loss(h, w, target, gamma=2.0), launch_budget=6,
                launcher="retailsim.ops.focal_loss.linear_triton")


def _contrastive_case(shape, dtype) -> Case:
    anchors, candidates, dim = shape
    items_per_basket = 8

    def make():
        return (_randn(anchors, dim, dtype=dtype), _randn(candidates, dim, dtype=dtype),
                torch.randint(0, candidates, (anchors,), device="cuda"),
                torch.arange(anchors, device="cuda") // items_per_basket,
                torch.arange(candidates, device="cuda") // items_per_basket,
                torch.randint(0, 1000, (candidates,), device="cuda"))

    def call(a, c, positive, anchor_group, candidate_group, label):
        return contrastive_loss(a, c, positive, anchor_group, candidate_group, candidate_label=label)

    return Case("contrastive_loss", shape, dtype, make, call, launch_budget=6,
                launcher="retailsim.ops.contrastive_loss.triton")


SCAN_SHAPE = (16, 1536, 2048, 16)  # (batch, dim, L, N)


def all_cases() -> list:
    return [
        _scan_case(SCAN_SHAPE, torch.bfloat16),
        _scan_case(SCAN_SHAPE, torch.float32),
        _focal_case((2048, 5003), torch.bfloat16),
        _focal_case((8192, 131072), torch.bfloat16),
        _linear_focal_case((2048, 512, 5003), torch.bfloat16),
        _linear_focal_case((8192, 512, 131072), torch.bfloat16),
        _contrastive_case((4096, 4096, 512), torch.bfloat16),
        _contrastive_case((4096, 4096, 512), torch.float32),
    ]
