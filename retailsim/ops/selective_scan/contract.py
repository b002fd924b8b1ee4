"""The launcher contract every selective-scan backend implements (``triton.py``, ``native.py``,
``torch_scan.py``), the same shape as the other ops' launchers:

    forward(*, u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states) -> ScanForward
    backward(*, dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints) -> ScanGrads
    checkpoint_shape(batch, dim, length, dstate, groups, save_states) -> the shape forward's checkpoints have
    config_for(shape, dtype, arch) -> dict: the tiles, warps or chunk lengths used for that problem

Keyword arguments only. ``out`` and the gradients are in the work dtype (float32; float64 for float64 inputs;
the Triton path on a GPU writes them in their input's dtype) and the caller casts; a gradient is None where
its input is None. ``checkpoints`` is whatever the backend's backward needs to recompute the states, one
tensor (float32/float64), of ``checkpoint_shape``. ``shape`` in ``config_for`` is (batch, dim, L, N).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class ScanForward(NamedTuple):
    out: torch.Tensor          # (batch, dim, L)
    last_state: torch.Tensor   # (batch, dim, N), no gradient
    checkpoints: torch.Tensor  # backend-defined, of checkpoint_shape(...)


class ScanGrads(NamedTuple):
    """Gradients in the order of ``selective_scan``'s arguments."""

    du: torch.Tensor
    ddelta: torch.Tensor
    dA: torch.Tensor
    dB: torch.Tensor
    dC: torch.Tensor
    dD: torch.Tensor | None
    dz: torch.Tensor | None
    ddelta_bias: torch.Tensor | None


def groups_of(B: torch.Tensor, C: torch.Tensor) -> int:
    """How many B/C groups: the group axis of a 4-D B or C, else 1."""
    return B.shape[1] if B.dim() == 4 else (C.shape[1] if C.dim() == 4 else 1)
