"""The launcher contract of the contrastive loss's backends (``triton.py``, ``chunked.py``: backend names
``triton`` and ``torch``), the same shape as the other ops' launchers. Each backend runs the whole op, the
normalisation, the masks and the reduction included:

    forward(*, anchors, candidates, index, scale, normalize, reduction, want_anchor_grad,
            want_candidate_grad) -> (loss, Saved)
    backward(*, grad_loss, anchors, candidates, index, scale, normalize, reduction, saved,
             want_anchor_grad, want_candidate_grad) -> (grad_anchors, grad_candidates)
    saved_shapes(num_anchors, num_candidates, dim, dtype, device, normalize, reduction, want_anchor_grad,
                 want_candidate_grad)
        -> Saved of shapes (what torch.compile's fake tensors need)
    config_for(shape, dtype, arch) -> dict: the tiles and warps for (N, M, D)

Keyword arguments only. ``index`` is the ``CandidateIndex`` of ``function.py``; ``loss`` is in anchors' dtype,
the gradients in their inputs' dtypes (a 0-element tensor where a gradient is not wanted). What ``Saved``
holds is the backend's own business between its forward and its backward; its shapes are common.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class FocalTerms(NamedTuple):
    """The focal transform the Triton launchers may apply to each row's loss: the path of linear_focal_loss,
    which runs on these kernels with the weight rows as candidates (``focal_loss/linear_triton.py``)."""

    gamma: float
    alpha: torch.Tensor | None   # (M,) per-candidate weights, constants
    ignore_index: int            # the positive index of a row that does not count


class Saved(NamedTuple):
    """What a forward keeps for its backward, in the work dtype (float32; float64 for float64 inputs); a field a
    call does not need is a 0-element tensor."""

    norms: torch.Tensor           # (N + M,): max(||x||, eps) of each anchor row, then of each candidate row
    row_stats: torch.Tensor       # (2, N): m_i and 1 / l_i over A(i); (3, N) with FocalTerms: d focal_i / d ce_i too
    n_valid: torch.Tensor         # (1,): anchors with a positive (the mean's divisor before its clamp)
    weighted: torch.Tensor        # (S, N, D): per split of the candidates, O_i = sum_j P_ij c_j within it
    split_weight: torch.Tensor    # (S, N): the weight of each split's O_i in the whole row's
    candidate_grad_unit: torch.Tensor  # (M, D): the candidate gradient at unit row weights, where a backend
                                       # computes it in the forward pass


def empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return like.new_empty(0, dtype=dtype)
