"""The autograd Function of the contrastive loss, shared by the Triton and the chunked PyTorch paths, and its
``torch.library`` custom ops.

The backend is chosen by the caller before ``apply`` (SPEC 6.1) and passed in by name; its launchers follow
``contract.py``. Eager calls run them directly; under ``torch.compile`` the Function calls the custom ops
``retailsim::contrastive_forward`` / ``retailsim::contrastive_candidate_grad``, opaque to the compiler, with
fake implementations for their shapes. m_i and l_i
are the max and the sum of exp(s_ij - m_i) over anchor i's allowed candidates, so that
  loss_i = (m_i - s_ip) + log l_i
needs no difference of two large log-sum-exps (for a confident anchor m_i and s_ip are the same float).
Here live what both share: normalisation (and its backward), the reduction, and the chain rule
  dL/da_i = scale * w_i * (O_i - c_{p_i}),   dL/dc_j = scale * G_j,   G_j = sum_i w_i (P_ij - [j = p_i]) a_i,
where w_i is the upstream gradient of loss_i (0 for ignored anchors). Nothing of size N x M is kept.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops.contrastive_loss.contract import FOLDS_CANDIDATE_GRAD, KEEPS_INPUT_DTYPE, AnchorStats
from retailsim.ops.contrastive_loss.reference import reduce_rows

NORM_EPS = 1e-12  # as F.normalize: a / max(||a||, eps)


class CandidateIndex(NamedTuple):
    """The integer inputs, contiguous int64; ``positive_label[i]`` = candidate_label[p_i] (any value if p_i = -1)."""

    positive_index: torch.Tensor   # (N,)
    anchor_group: torch.Tensor     # (N,)
    candidate_group: torch.Tensor  # (M,)
    candidate_label: torch.Tensor | None  # (M,)
    positive_label: torch.Tensor | None   # (N,)


_MODULES = {"triton": "triton", "torch": "chunked"}


def launcher_module(name: str) -> ModuleType:
    """The launcher module of backend ``name`` (imported on first use: Triton only when it runs)."""
    return importlib.import_module(f"retailsim.ops.contrastive_loss.{_MODULES[name]}")


def _index(positive_index, anchor_group, candidate_group, candidate_label, positive_label) -> CandidateIndex:
    return CandidateIndex(positive_index, anchor_group, candidate_group, candidate_label, positive_label)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("retailsim::contrastive_forward", mutates_args=())
def contrastive_forward(
    a_op: torch.Tensor, c_op: torch.Tensor, positive_index: torch.Tensor, anchor_group: torch.Tensor,
    candidate_group: torch.Tensor, candidate_label: Optional[torch.Tensor], positive_label: Optional[torch.Tensor],
    unit_weight: Optional[torch.Tensor], scale: float, want_anchor_grad: bool, backend_name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """AnchorStats with an empty tensor for each None."""
    stats = launcher_module(backend_name).forward(
        a_op=a_op, c_op=c_op, index=_index(positive_index, anchor_group, candidate_group, candidate_label,
                                           positive_label),
        scale=scale, want_anchor_grad=want_anchor_grad, unit_weight=unit_weight)
    # The backends carve m, l and the positive score out of one buffer; a custom op's outputs may not alias.
    small = tuple(x.clone() for x in stats[:3])
    return (*small, *(a_op.new_empty(0) if x is None else x.contiguous() for x in stats[3:]))


@contrastive_forward.register_fake
def _(a_op, c_op, positive_index, anchor_group, candidate_group, candidate_label, positive_label, unit_weight,
      scale, want_anchor_grad, backend_name):
    work = _work_dtype(a_op)
    n = a_op.shape[0]
    folds = unit_weight is not None and FOLDS_CANDIDATE_GRAD[backend_name]
    return (a_op.new_empty(n, dtype=work), a_op.new_empty(n, dtype=work), a_op.new_empty(n, dtype=work),
            a_op.new_empty(a_op.shape, dtype=work) if want_anchor_grad else a_op.new_empty(0),
            c_op.new_empty(c_op.shape, dtype=work) if folds else a_op.new_empty(0))


@torch.library.custom_op("retailsim::contrastive_candidate_grad", mutates_args=())
def contrastive_candidate_grad(
    a_op: torch.Tensor, c_op: torch.Tensor, positive_index: torch.Tensor, anchor_group: torch.Tensor,
    candidate_group: torch.Tensor, candidate_label: Optional[torch.Tensor], positive_label: Optional[torch.Tensor],
    row_max: torch.Tensor, row_sum: torch.Tensor, row_weight: torch.Tensor, scale: float, backend_name: str,
) -> torch.Tensor:
    return launcher_module(backend_name).candidate_grad(
        a_op=a_op, c_op=c_op, index=_index(positive_index, anchor_group, candidate_group, candidate_label,
                                           positive_label),
        scale=scale, row_max=row_max, row_sum=row_sum, row_weight=row_weight).contiguous()


@contrastive_candidate_grad.register_fake
def _(a_op, c_op, positive_index, anchor_group, candidate_group, candidate_label, positive_label, row_max, row_sum,
      row_weight, scale, backend_name):
    return c_op.new_empty(c_op.shape, dtype=_work_dtype(a_op))


def _anchor_stats(a_op, c_op, index, scale, want_anchor_grad, unit_weight, backend_name) -> AnchorStats:
    if not torch.compiler.is_compiling():
        return launcher_module(backend_name).forward(a_op=a_op, c_op=c_op, index=index, scale=scale,
                                                     want_anchor_grad=want_anchor_grad, unit_weight=unit_weight)
    stats = contrastive_forward(a_op, c_op, *index, unit_weight, scale, want_anchor_grad, backend_name)
    folds = unit_weight is not None and FOLDS_CANDIDATE_GRAD[backend_name]
    return AnchorStats(*stats[:3], stats[3] if want_anchor_grad else None, stats[4] if folds else None)


def _candidate_grad(a_op, c_op, index, scale, row_max, row_sum, row_weight, backend_name) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        return launcher_module(backend_name).candidate_grad(a_op=a_op, c_op=c_op, index=index, scale=scale,
                                                            row_max=row_max, row_sum=row_sum, row_weight=row_weight)
    return contrastive_candidate_grad(a_op, c_op, *index, row_max, row_sum, row_weight, scale, backend_name)


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
                reduction: str, backend_name: str):
        work_dtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
        operand_dtype = anchors.dtype if KEEPS_INPUT_DTYPE[backend_name] else work_dtype
        scale = 1.0 / temperature
        a_op = _normalized(anchors, work_dtype, normalize)[0].to(operand_dtype).contiguous()  # (N, D)
        c_op = _normalized(candidates, work_dtype, normalize)[0].to(operand_dtype).contiguous()  # (M, D)
        valid = index.positive_index >= 0                                            # (N,)

        want_anchor_grad = ctx.needs_input_grad[0]
        want_candidate_grad = ctx.needs_input_grad[1]
        # With a scalar reduction every w_i is the same number times valid_i: the torch path can then fold the
        # candidate gradient into its forward pass and the backward only scales it.
        unit_weight = valid.to(work_dtype) if want_candidate_grad and reduction != "none" else None
        row_max, row_sum, positive_score, weighted, candidate_grad_unit = _anchor_stats(
            a_op, c_op, index, scale, want_anchor_grad, unit_weight, backend_name)
        row_max = torch.where(valid, row_max, torch.zeros_like(row_max))             # (N,), finite
        row_sum = torch.where(valid, row_sum, torch.ones_like(row_sum))              # (N,), > 0
        loss_rows = torch.where(valid, (row_max - positive_score) + torch.log(row_sum),
                                torch.zeros_like(row_max))                           # (N,)
        loss = reduce_rows(loss_rows, valid, reduction)

        ctx.backend_name, ctx.scale, ctx.normalize, ctx.reduction = backend_name, scale, normalize, reduction
        ctx.index = index
        ctx.input_dtypes = (anchors.dtype, candidates.dtype)
        ctx.save_for_backward(anchors, candidates, row_max, row_sum, weighted, candidate_grad_unit)
        return loss.to(anchors.dtype)

    @staticmethod
    @once_differentiable  # the backward is hand-written; a second derivative raises instead of being wrong
    def backward(ctx, grad_loss):
        anchors, candidates, row_max, row_sum, weighted, candidate_grad_unit = ctx.saved_tensors
        index, scale, backend_name = ctx.index, ctx.scale, ctx.backend_name
        work_dtype = row_max.dtype
        operand_dtype = anchors.dtype if KEEPS_INPUT_DTYPE[backend_name] else work_dtype
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
                grad_c_unit = scale * _candidate_grad(a_op, c_op, index, scale, row_max, row_sum, row_weight,
                                                      backend_name)
            grad_candidates = _normalize_backward(grad_c_unit, c_unit, c_norm).to(ctx.input_dtypes[1])
        return grad_anchors, grad_candidates, None, None, None, None, None
