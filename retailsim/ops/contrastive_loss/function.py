"""The autograd Function of the contrastive loss, shared by the Triton and the chunked PyTorch paths.

The backend is chosen by the caller before ``apply`` (SPEC 6.1) and passed in as ``impl``: a module with
``forward(a, c, index, scale, want_anchor_grad, unit_weight) -> (m, l, positive_score, O, G_unit)`` and
``candidate_grad(a, c, index, scale, m, l, row_weight) -> G``, and a flag ``KEEPS_INPUT_DTYPE``; m_i and l_i
are the max and the sum of exp(s_ij - m_i) over anchor i's allowed candidates, so that
  loss_i = (m_i - s_ip) + log l_i
needs no difference of two large log-sum-exps (for a confident anchor m_i and s_ip are the same float).
Here live what both share: normalisation (and its backward), the reduction, and the chain rule
  dL/da_i = scale * w_i * (O_i - c_{p_i}),   dL/dc_j = scale * G_j,   G_j = sum_i w_i (P_ij - [j = p_i]) a_i,
where w_i is the upstream gradient of loss_i (0 for ignored anchors). Nothing of size N x M is kept.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops.contrastive_loss.reference import reduce_rows

NORM_EPS = 1e-12  # as F.normalize: a / max(||a||, eps)


class CandidateIndex(NamedTuple):
    """The integer inputs, contiguous int64; ``positive_label[i]`` = candidate_label[p_i] (any value if p_i = -1)."""

    positive_index: torch.Tensor   # (N,)
    anchor_group: torch.Tensor     # (N,)
    candidate_group: torch.Tensor  # (M,)
    candidate_label: torch.Tensor | None  # (M,)
    positive_label: torch.Tensor | None   # (N,)


def _normalized(x: torch.Tensor, work_dtype: torch.dtype, normalize: bool):
    """(x / max(||x||, eps), that denominator) in the working dtype; (x, None) when not normalising."""
    x = x.to(work_dtype)
    if not normalize:
        return x, None
    norm = x.norm(dim=1, keepdim=True).clamp(min=NORM_EPS)                          # (R, 1)
    return x / norm, norm


def _normalize_backward(grad_unit: torch.Tensor, unit: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """d/dx of u = x / max(||x||, eps): (g - u (u . g)) / ||x||; below eps the map is x / eps, so g / eps."""
    if norm is None:
        return grad_unit
    radial = (unit * grad_unit).sum(dim=1, keepdim=True)                             # (R, 1)
    radial = torch.where(norm > NORM_EPS, radial, torch.zeros_like(radial))
    return (grad_unit - unit * radial) / norm


class ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, index: CandidateIndex, temperature: float, normalize: bool,
                reduction: str, impl):
        work_dtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
        operand_dtype = anchors.dtype if impl.KEEPS_INPUT_DTYPE else work_dtype
        scale = 1.0 / temperature
        a_op = _normalized(anchors, work_dtype, normalize)[0].to(operand_dtype).contiguous()  # (N, D)
        c_op = _normalized(candidates, work_dtype, normalize)[0].to(operand_dtype).contiguous()  # (M, D)
        valid = index.positive_index >= 0                                            # (N,)

        want_anchor_grad = ctx.needs_input_grad[0]
        want_candidate_grad = ctx.needs_input_grad[1]
        # With a scalar reduction every w_i is the same number times valid_i: the torch path can then fold the
        # candidate gradient into its forward pass and the backward only scales it.
        unit_weight = valid.to(work_dtype) if want_candidate_grad and reduction != "none" else None
        row_max, row_sum, positive_score, weighted, candidate_grad_unit = impl.forward(
            a_op, c_op, index, scale, want_anchor_grad, unit_weight)
        row_max = torch.where(valid, row_max, torch.zeros_like(row_max))             # (N,), finite
        row_sum = torch.where(valid, row_sum, torch.ones_like(row_sum))              # (N,), > 0
        loss_rows = torch.where(valid, (row_max - positive_score) + torch.log(row_sum),
                                torch.zeros_like(row_max))                           # (N,)
        loss = reduce_rows(loss_rows, valid, reduction)

        ctx.impl, ctx.scale, ctx.normalize, ctx.reduction = impl, scale, normalize, reduction
        ctx.index = index
        ctx.input_dtypes = (anchors.dtype, candidates.dtype)
        ctx.save_for_backward(anchors, candidates, row_max, row_sum, weighted, candidate_grad_unit)
        return loss.to(anchors.dtype)

    @staticmethod
    @once_differentiable  # the backward is hand-written; a second derivative raises instead of being wrong
    def backward(ctx, grad_loss):
        anchors, candidates, row_max, row_sum, weighted, candidate_grad_unit = ctx.saved_tensors
        index, scale, impl = ctx.index, ctx.scale, ctx.impl
        work_dtype = row_max.dtype
        operand_dtype = anchors.dtype if impl.KEEPS_INPUT_DTYPE else work_dtype
        a_unit, a_norm = _normalized(anchors, work_dtype, ctx.normalize)
        c_unit, c_norm = _normalized(candidates, work_dtype, ctx.normalize)
        valid = (index.positive_index >= 0).to(work_dtype)                           # (N,)
        grad_loss = grad_loss.to(work_dtype)
        if ctx.reduction == "none":
            per_row_factor = grad_loss                                               # (N,)
        elif ctx.reduction == "sum":
            per_row_factor = grad_loss
        else:
            per_row_factor = grad_loss / valid.sum().clamp(min=1)
        row_weight = per_row_factor * valid                                          # (N,)

        grad_anchors = grad_candidates = None
        c_op = c_unit.to(operand_dtype).contiguous()
        if ctx.needs_input_grad[0]:
            positive_candidate = c_op[index.positive_index.clamp(min=0)].to(work_dtype)  # (N, D)
            grad_a_unit = (scale * row_weight)[:, None] * (weighted - positive_candidate)
            grad_anchors = _normalize_backward(grad_a_unit, a_unit, a_norm).to(ctx.input_dtypes[0])
        if ctx.needs_input_grad[1]:
            if candidate_grad_unit is not None:
                grad_c_unit = (scale * per_row_factor) * candidate_grad_unit         # (M, D)
            else:
                a_op = a_unit.to(operand_dtype).contiguous()
                grad_c_unit = scale * impl.candidate_grad(a_op, c_op, index, scale, row_max, row_sum,
                                                           row_weight)
            grad_candidates = _normalize_backward(grad_c_unit, c_unit, c_norm).to(ctx.input_dtypes[1])
        return grad_anchors, grad_candidates, None, None, None, None, None
