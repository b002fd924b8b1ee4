"""The launcher contract of the contrastive loss's backends (``triton.py``, ``chunked.py``: backend names
``triton`` and ``torch``), the same shape as the other ops' launchers:

    KEEPS_INPUT_DTYPE: whether bf16/fp16 operands reach the backend as they are (else upcast to float32)
    forward(*, a_op, c_op, index, scale, want_anchor_grad, unit_weight) -> AnchorStats
    candidate_grad(*, a_op, c_op, index, scale, row_max, row_sum, row_weight) -> (M, D)
    config_for(shape, dtype, arch) -> dict: the tiles and warps for (N, M, D)

Keyword arguments only; results in the work dtype (float32, float64 for float64 operands). ``index`` is the
``CandidateIndex`` of ``function.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class AnchorStats(NamedTuple):
    """Per anchor i: m_i and l_i (max and sum of exp(s_ij - m_i) over A(i)), the positive's score s_ip,
    O_i = sum_j P_ij c_j when the anchor gradient is wanted, and the candidate gradient at unit row weights
    when the backend computes it in the same pass (else None)."""

    row_max: torch.Tensor
    row_sum: torch.Tensor
    positive_score: torch.Tensor
    weighted: torch.Tensor | None
    candidate_grad_unit: torch.Tensor | None


# Which backends compute candidate_grad_unit in forward (given unit weights), and keep bf16/fp16 operands.
FOLDS_CANDIDATE_GRAD = {"torch": True, "triton": False}
KEEPS_INPUT_DTYPE = {"torch": False, "triton": True}
