"""The launcher contract of the focal loss's backends (``triton.py``, ``torch_path.py``: backend names
``triton`` and ``torch``), the same shape as the other ops' launchers:

    forward(*, logits, target, alpha, gamma, ignore_index, reduction, compute_grad, grad_out, n_valid) -> FocalRows
    config_for(shape, dtype, arch) -> dict: the block and warps (Triton) or rows per chunk (torch) for (N, V)

Keyword arguments only. One pass gives the per-row loss and, when ``compute_grad``, the gradient already
scaled for ``reduction`` (mean: by 1 / n_valid), written into ``grad_out`` (which may be ``logits`` itself,
for in place) or a new buffer. logits (N, V) has unit stride along V.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FocalRows(NamedTuple):
    loss: torch.Tensor          # (N,) float32 (float64 for float64 logits)
    grad: torch.Tensor | None   # (N, V) in logits' dtype, None unless compute_grad
