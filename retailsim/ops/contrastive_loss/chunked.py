"""PyTorch path of the contrastive loss (CPU without Triton, MPS): the same two passes as the Triton kernels,
over chunks of anchors, so memory stays O(chunk x M) instead of O(N x M).

Operands are normalised here and computed in the working dtype (float32, or float64 for float64 inputs).
The forward pass computes per anchor the max m_i and sum l_i of exp(s_ij - m_i) over the allowed candidates,
the positive score and O_i = sum_j P_ij c_j (what the anchor gradient needs), and, with a scalar reduction,
the candidate gradient too: a chunk holds whole rows of P, so no second pass is needed. With
reduction="none" the backward recomputes P chunk by chunk for the given row weights. Chunks run in a fixed
order, so results are deterministic. The chain rule the backward applies:
  dL/da_i = scale * w_i * (O_i - c_{p_i}),   dL/dc_j = scale * sum_i w_i (P_ij - [j = p_i]) a_i,
with w_i the upstream gradient of loss_i (0 for ignored anchors), then the normalisation's own backward.
"""
from __future__ import annotations

import torch

from retailsim.ops.contrastive_loss.contract import Saved, empty
from retailsim.ops.contrastive_loss.reference import allowed_candidates, reduce_rows

# Elements of one (chunk, M) score block: 2**20 floats = 4 MiB per temporary at float32.
CHUNK_ELEMENTS = 2**20
NORM_EPS = 1e-12  # as F.normalize: a / max(||a||, eps)


def rows_per_chunk(num_candidates: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_candidates))


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """{"rows": anchors per chunk} for (N, M, D); the same on every device."""
    return {"rows": rows_per_chunk(shape[1])}


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def saved_shapes(num_anchors, num_candidates, dim, dtype, device, normalize, reduction, want_anchor_grad,
                 want_candidate_grad) -> Saved:
    folds = want_candidate_grad and reduction != "none"
    return Saved(norms=(num_anchors + num_candidates,) if normalize else (0,), row_stats=(2, num_anchors), n_valid=(1,),
                 weighted=(1, num_anchors, dim) if want_anchor_grad else (0,),
                 split_weight=(1, num_anchors) if want_anchor_grad else (0,),
                 candidate_grad_unit=(num_candidates, dim) if folds else (0,))


def _chunk_probabilities(a_chunk, c_op, index, rows: slice, scale, stats=None):
    """Scores and softmax weights over A(i) of one chunk of anchors against all candidates, with the row max
    m and sum l of exp(s - m) (given ``stats`` = (m, 1 / l) from the forward, they are reused, not recomputed)."""
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
        return scores, exp_scores / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))[:, None], \
            row_max, row_sum
    row_max, inv_row_sum = stats
    exp_scores = torch.exp(masked - row_max[:, None])
    return scores, exp_scores * inv_row_sum[:, None], row_max, None


def _subtract_positive(weighted: torch.Tensor, positive: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
    """dS = w_i (P_ij - [j = p_i]): ignored rows have w_i = 0, so their column-0 entry gets 0 added."""
    return weighted.scatter_add_(1, positive.clamp(min=0)[:, None], -row_weight[:, None])


def _normalized(x: torch.Tensor, work_dtype: torch.dtype, normalize: bool, norm: torch.Tensor | None = None):
    """(x / max(||x||, eps), that denominator) in the working dtype (the denominator given or computed);
    (x, None) when not normalising."""
    x = x.to(work_dtype)
    if not normalize:
        return x, None
    if norm is None:
        norm = x.norm(dim=1).clamp(min=NORM_EPS)                                     # (R,)
    return x / norm[:, None], norm


def _normalize_backward(grad_unit: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """d/dx of u = x / max(||x||, eps): (g - u (u . g)) / ||x||; below eps the map is x / eps, so g / eps."""
    if norm is None:
        return grad_unit
    radial = (unit * grad_unit).sum(dim=1, keepdim=True)                             # (R, 1)
    radial = torch.where(norm[:, None] > NORM_EPS, radial, torch.zeros_like(radial))
    return (grad_unit - unit * radial) / norm[:, None]


def forward(*, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
            want_anchor_grad: bool, want_candidate_grad: bool):
    """The loss (anchors' dtype) and the Saved of contract.py: m, 1 / l, O (if wanted) and, with a scalar
    reduction, the candidate gradient at unit weights (if wanted)."""
    work = _work_dtype(anchors)
    a_op, a_norm = _normalized(anchors, work, normalize)                             # (N, D)
    c_op, c_norm = _normalized(candidates, work, normalize)                          # (M, D)
    num_anchors, dim = a_op.shape
    valid = index.positive_index >= 0                                                # (N,)
    # With a scalar reduction every w_i is the same number times valid_i: the candidate gradient can then be
    # folded into this pass and the backward only scales it.
    unit_weight = valid.to(work) if want_candidate_grad and reduction != "none" else None
    row_max, row_sum, positive_score = a_op.new_empty(3, num_anchors)               # (N,) each
    weighted = a_op.new_empty(1, num_anchors, dim) if want_anchor_grad else None    # (1, N, D)
    candidate_grad_unit = torch.zeros_like(c_op) if unit_weight is not None else None  # (M, D)
    step = rows_per_chunk(c_op.shape[0])
    for start in range(0, num_anchors, step):
        rows = slice(start, min(start + step, num_anchors))
        a_chunk = a_op[rows]                                                         # (n, D)
        positive = index.positive_index[rows]
        scores, probabilities, row_max[rows], row_sum[rows] = _chunk_probabilities(a_chunk, c_op, index, rows,
                                                                                   scale)
        picked = scores.gather(1, positive.clamp(min=0)[:, None]).squeeze(1)
        positive_score[rows] = torch.where(positive >= 0, picked, torch.zeros_like(picked))
        if weighted is not None:
            weighted[0, rows] = probabilities @ c_op
        if candidate_grad_unit is not None:
            row_weight = unit_weight[rows]
            d_scores = _subtract_positive(probabilities * row_weight[:, None], positive, row_weight)
            candidate_grad_unit += d_scores.T @ a_chunk
    row_max = torch.where(valid, row_max, torch.zeros_like(row_max))                 # (N,), finite
    row_sum = torch.where(valid, row_sum, torch.ones_like(row_sum))                  # (N,), > 0
    loss_rows = torch.where(valid, (row_max - positive_score) + torch.log(row_sum),
                            torch.zeros_like(row_max))                               # (N,)
    loss = reduce_rows(loss_rows, valid, reduction)
    saved = Saved(
        norms=torch.cat([a_norm, c_norm]) if normalize else empty(a_op, work),
        row_stats=torch.stack([row_max, 1.0 / row_sum]),
        n_valid=valid.sum().to(work).reshape(1),
        weighted=weighted if weighted is not None else empty(a_op, work),
        split_weight=a_op.new_ones(1, num_anchors) if weighted is not None else empty(a_op, work),
        candidate_grad_unit=candidate_grad_unit if candidate_grad_unit is not None else empty(a_op, work))
    return loss.to(anchors.dtype), saved


def _candidate_grad(a_op, c_op, index, scale: float, row_stats: torch.Tensor, row_weight: torch.Tensor):
    """(M, D): sum_i w_i (P_ij - [j = p_i]) a_i, recomputing P chunk by chunk from the stored m and 1 / l."""
    grad = torch.zeros_like(c_op)                                                    # (M, D)
    step = rows_per_chunk(c_op.shape[0])
    for start in range(0, a_op.shape[0], step):
        rows = slice(start, min(start + step, a_op.shape[0]))
        _, probabilities, _, _ = _chunk_probabilities(a_op[rows], c_op, index, rows, scale,
                                                      (row_stats[0, rows], row_stats[1, rows]))
        weights = row_weight[rows]
        d_scores = _subtract_positive(probabilities * weights[:, None], index.positive_index[rows], weights)
        grad += d_scores.T @ a_op[rows]
    return grad


def backward(*, grad_loss, anchors, candidates, index, scale: float, normalize: bool, reduction: str,
             saved: Saved, want_anchor_grad: bool, want_candidate_grad: bool):
    work = saved.row_stats.dtype
    num_anchors = anchors.shape[0]
    norms = saved.norms if normalize else None
    a_unit, a_norm = _normalized(anchors, work, normalize, None if norms is None else norms[:num_anchors])
    c_unit, c_norm = _normalized(candidates, work, normalize, None if norms is None else norms[num_anchors:])
    valid = (index.positive_index >= 0).to(work)                                     # (N,)
    grad_loss = grad_loss.to(work)
    per_row_factor = grad_loss / saved.n_valid.clamp(min=1)[0] if reduction == "mean" else grad_loss
    row_weight = per_row_factor * valid                                              # (N,)
    grad_anchors, grad_candidates = empty(anchors, anchors.dtype), empty(candidates, candidates.dtype)
    if want_anchor_grad:
        positive_candidate = c_unit[index.positive_index.clamp(min=0)]               # (N, D)
        grad_a_unit = (scale * row_weight)[:, None] * (saved.weighted[0] - positive_candidate)
        grad_anchors = _normalize_backward(grad_a_unit, a_unit, a_norm).to(anchors.dtype)
    if want_candidate_grad:
        if reduction != "none":  # folded into the forward pass
            grad_c_unit = (scale * per_row_factor) * saved.candidate_grad_unit      # (M, D)
        else:
            grad_c_unit = scale * _candidate_grad(a_unit, c_unit, index, scale, saved.row_stats, row_weight)
        grad_candidates = _normalize_backward(grad_c_unit, c_unit, c_norm).to(candidates.dtype)
    return grad_anchors, grad_candidates
