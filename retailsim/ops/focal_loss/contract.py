"""The launcher contract of the focal loss's backends (``triton.py``, ``torch_path.py``: backend names
``triton`` and ``torch``), the same shape as the other ops' launchers:

    forward(*, logits, target, alpha, gamma, ignore_index, reduction, compute_grad, grad_out, n_valid,
            save_stats, loss_dtype) -> FocalRows
    reduce(*, loss_rows, target, ignore_index, reduction, out_dtype) -> (loss (), n_valid () int64)
    backward(*, logits, target, alpha, gamma, ignore_index, reduction, stats, grad_loss, n_valid,
             grad_out) -> gradient (N, V)
    config_for(shape, dtype, arch) -> dict: the block and warps (Triton) or rows per chunk (torch) for (N, V)

Keyword arguments only. ``forward`` reads the logits once for the per-row loss (and the per-row (lse, ce)
``backward`` needs, when ``save_stats``); with ``compute_grad`` it also writes the gradient already scaled
for ``reduction`` (mean: by 1 / n_valid) into ``grad_out`` (which may be ``logits`` itself, for in place) or
a new buffer: the path of linear_focal_loss, whose row chunks need their gradient at once. ``focal_loss``
instead runs forward, reduce and, in autograd's backward, ``backward``: three passes over the logits
(read, read, write) and the grad_output scaling inside the last. logits (N, V) has unit stride along V.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FocalRows(NamedTuple):
    loss: torch.Tensor          # (N,) float32 (float64 for float64 logits), or the loss_dtype asked for
    grad: torch.Tensor | None   # (N, V) in logits' dtype, None unless compute_grad
    stats: torch.Tensor | None = None   # (N, 2) (lse, ce) per row in the compute dtype, when save_stats
