"""PyTorch path of the contrastive loss (CPU without Triton, MPS): the same two passes as the Triton kernels,
over chunks of anchors, so memory stays O(chunk x M) instead of O(N x M).

Operands arrive normalised and in the working dtype (float32, or float64 for float64 inputs).
``forward`` returns per-anchor max m_i and sum l_i of exp(s_ij - m_i) over the allowed candidates, the
positive score and O_i = sum_j P_ij c_j (what the anchor gradient
needs), and, when given unit row weights, the candidate gradient too: a chunk holds whole rows of P, so no
second pass is needed. ``candidate_grad`` is that second pass for arbitrary row weights (reduction="none").
Chunks run in a fixed order, so results are deterministic.
"""
from __future__ import annotations

import torch

from retailsim.ops.contrastive_loss.contract import AnchorStats
from retailsim.ops.contrastive_loss.reference import allowed_candidates

# Elements of one (chunk, M) score block: 2**20 floats = 4 MiB per temporary at float32.
CHUNK_ELEMENTS = 2**20
KEEPS_INPUT_DTYPE = False  # operands are upcast to float32 before they reach this path


def rows_per_chunk(num_candidates: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_candidates))


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """{"rows": anchors per chunk} for (N, M, D); the same on every device."""
    return {"rows": rows_per_chunk(shape[1])}


def _chunk_probabilities(a_chunk, c_op, index, rows: slice, scale, stats=None):
    """Scores and softmax weights over A(i) of one chunk of anchors against all candidates, with the row max
    m and sum l of exp(s - m) (given ``stats`` = (m, l) from the forward, they are reused, not recomputed)."""
    positive = index.positive_index[rows]                                            # (n,)
    scores = (a_chunk @ c_op.T) * scale                                              # (n, M)
    allowed = allowed_candidates(positive, index.anchor_group[rows], index.candidate_group,
                                 index.candidate_label)                              # (n, M)
    masked = scores.masked_fill(~allowed, float("-inf"))                             # (n, M)
    if stats is None:
        row_max = masked.max(dim=1).values                                           # (n,), -inf if ignored
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        exp_scores = torch.exp(masked - row_max[:, None])                            # (n, M), 0 where masked
        row_sum = exp_scores.sum(dim=1)                                              # (n,), 0 if ignored
    else:
        row_max, row_sum = stats
        exp_scores = torch.exp(masked - row_max[:, None])
    probabilities = exp_scores / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))[:, None]
    return scores, probabilities, row_max, row_sum


def _subtract_positive(weighted: torch.Tensor, positive: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """dS = w_i (P_ij - [j = p_i]): ignored rows have w_i = 0, so their column-0 entry gets 0 added."""
    return weighted.scatter_add_(1, positive.clamp(min=0)[:, None], -row_weight[:, None])


def forward(*, a_op, c_op, index, scale: float, want_anchor_grad: bool,
            unit_weight: torch.Tensor | None = None) -> AnchorStats:
    """m, l, the positive scores, O (if wanted) and G at unit weights (if given), as the module docstring says."""
    num_anchors, dim = a_op.shape
    row_max, row_sum, positive_score = a_op.new_empty(3, num_anchors)               # (N,) each
    weighted_candidates = a_op.new_empty(num_anchors, dim) if want_anchor_grad else None  # (N, D)
    candidate_grad_unit = torch.zeros_like(c_op) if unit_weight is not None else None     # (M, D)
    step = rows_per_chunk(c_op.shape[0])
    for start in range(0, num_anchors, step):
        rows = slice(start, min(start + step, num_anchors))
        a_chunk = a_op[rows]                                                         # (n, D)
        positive = index.positive_index[rows]
        scores, probabilities, row_max[rows], row_sum[rows] = _chunk_probabilities(a_chunk, c_op, index, rows,
                                                                                   scale)
        picked = scores.gather(1, positive.clamp(min=0)[:, None]).squeeze(1)
        positive_score[rows] = torch.where(positive >= 0, picked, torch.zeros_like(picked))
        if weighted_candidates is not None:
            weighted_candidates[rows] = probabilities @ c_op
        if candidate_grad_unit is not None:
            row_weight = unit_weight[rows]
            d_scores = _subtract_positive(probabilities * row_weight[:, None], positive, row_weight)
            candidate_grad_unit += d_scores.T @ a_chunk
    return AnchorStats(row_max, row_sum, positive_score, weighted_candidates, candidate_grad_unit)


def candidate_grad(*, a_op, c_op, index, scale: float, row_max: torch.Tensor, row_sum: torch.Tensor,
                   row_weight: torch.Tensor) -> torch.Tensor:
    """(M, D): sum_i w_i (P_ij - [j = p_i]) a_i, recomputing P chunk by chunk from the stored m and l."""
    grad = torch.zeros_like(c_op)                                                    # (M, D)
    step = rows_per_chunk(c_op.shape[0])
    for start in range(0, a_op.shape[0], step):
        rows = slice(start, min(start + step, a_op.shape[0]))
        _, probabilities, _, _ = _chunk_probabilities(a_op[rows], c_op, index, rows, scale,
                                                      (row_max[rows], row_sum[rows]))
        weights = row_weight[rows]
        d_scores = _subtract_positive(probabilities * weights[:, None], index.positive_index[rows], weights)
        grad += d_scores.T @ a_op[rows]
    return grad
