"""The autograd Function of the contrastive loss, shared by the Triton and the chunked PyTorch paths, and its
``torch.library`` custom ops.

The backend is chosen by the caller before ``apply`` (SPEC 6.1) and passed in by name; its launchers follow
``contract.py`` and run the whole op (normalisation, masks, reduction, and their backward) so that a CUDA call
is a handful of kernel launches. Eager calls run the launchers directly; under ``torch.compile`` the Function
calls the custom ops ``retailsim::contrastive_forward`` / ``retailsim::contrastive_backward``, opaque to the
compiler, with fake implementations for their shapes. Nothing of size N x M is kept.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops.contrastive_loss.contract import Saved


class CandidateIndex(NamedTuple):
    """The integer inputs, contiguous int64."""

    positive_index: torch.Tensor   # (N,)
    anchor_group: torch.Tensor     # (N,)
    candidate_group: torch.Tensor  # (M,)
    candidate_label: torch.Tensor | None  # (M,)


_MODULES = {"triton": "triton", "torch": "chunked"}


def launcher_module(name: str) -> ModuleType:
    """The launcher module of backend ``name`` (imported on first use: Triton only when it runs)."""
    return importlib.import_module(f"retailsim.ops.contrastive_loss.{_MODULES[name]}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("retailsim::contrastive_forward", mutates_args=())
def contrastive_forward(
    anchors: torch.Tensor, candidates: torch.Tensor, positive_index: torch.Tensor, anchor_group: torch.Tensor,
    candidate_group: torch.Tensor, candidate_label: Optional[torch.Tensor], scale: float, normalize: bool,
    reduction: str, want_anchor_grad: bool, want_candidate_grad: bool, backend_name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, *Saved)."""
    loss, saved = launcher_module(backend_name).forward(
        anchors=anchors, candidates=candidates,
        index=CandidateIndex(positive_index, anchor_group, candidate_group, candidate_label), scale=scale,
        normalize=normalize, reduction=reduction, want_anchor_grad=want_anchor_grad,
        want_candidate_grad=want_candidate_grad)
    return (loss, *saved)


@contrastive_forward.register_fake
def _(anchors, candidates, positive_index, anchor_group, candidate_group, candidate_label, scale, normalize,
      reduction, want_anchor_grad, want_candidate_grad, backend_name):
    work = _work_dtype(anchors)
    shapes = launcher_module(backend_name).saved_shapes(
        anchors.shape[0], candidates.shape[0], anchors.shape[1], anchors.dtype, anchors.device, normalize,
        reduction, want_anchor_grad, want_candidate_grad)
    loss = anchors.new_empty((anchors.shape[0],) if reduction == "none" else ())
    return (loss, *(anchors.new_empty(shape, dtype=work) for shape in shapes))


@torch.library.custom_op("retailsim::contrastive_backward", mutates_args=())
def contrastive_backward(
    grad_loss: torch.Tensor, anchors: torch.Tensor, candidates: torch.Tensor, positive_index: torch.Tensor,
    anchor_group: torch.Tensor, candidate_group: torch.Tensor, candidate_label: Optional[torch.Tensor],
    norms: torch.Tensor, row_stats: torch.Tensor, n_valid: torch.Tensor, weighted: torch.Tensor,
    split_weight: torch.Tensor, candidate_grad_unit: torch.Tensor, scale: float, normalize: bool, reduction: str,
    want_anchor_grad: bool, want_candidate_grad: bool, backend_name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return launcher_module(backend_name).backward(
        grad_loss=grad_loss, anchors=anchors, candidates=candidates,
        index=CandidateIndex(positive_index, anchor_group, candidate_group, candidate_label), scale=scale,
        normalize=normalize, reduction=reduction,
        saved=Saved(norms, row_stats, n_valid, weighted, split_weight, candidate_grad_unit),
        want_anchor_grad=want_anchor_grad, want_candidate_grad=want_candidate_grad)


@contrastive_backward.register_fake
def _(grad_loss, anchors, candidates, positive_index, anchor_group, candidate_group, candidate_label, norms,
      row_stats, n_valid, weighted, split_weight, candidate_grad_unit, scale, normalize, reduction,
      want_anchor_grad, want_candidate_grad, backend_name):
    return (torch.empty_like(anchors) if want_anchor_grad else anchors.new_empty(0),
            torch.empty_like(candidates) if want_candidate_grad else candidates.new_empty(0))


class ContrastiveLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, index: CandidateIndex, temperature: float, normalize: bool,
                reduction: str, backend_name: str):
        scale = 1.0 / temperature
        wants = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]))
        if torch.compiler.is_compiling():
            loss, *saved = contrastive_forward(anchors, candidates, *index, scale, normalize, reduction, *wants,
                                               backend_name)
        else:
            loss, saved = launcher_module(backend_name).forward(
                anchors=anchors, candidates=candidates, index=index, scale=scale, normalize=normalize,
                reduction=reduction, want_anchor_grad=wants[0], want_candidate_grad=wants[1])
        ctx.options = (scale, normalize, reduction, wants, backend_name)
        ctx.index = index
        ctx.save_for_backward(anchors, candidates, *saved)
        return loss

    @staticmethod
    @once_differentiable  # the backward is hand-written; a second derivative raises instead of being wrong
    def backward(ctx, grad_loss):
        anchors, candidates, *saved = ctx.saved_tensors
        scale, normalize, reduction, wants, backend_name = ctx.options
        if torch.compiler.is_compiling():
            grad_anchors, grad_candidates = contrastive_backward(
                grad_loss, anchors, candidates, *ctx.index, *saved, scale, normalize, reduction, *wants,
                backend_name)
        else:
            grad_anchors, grad_candidates = launcher_module(backend_name).backward(
                grad_loss=grad_loss, anchors=anchors, candidates=candidates, index=ctx.index, scale=scale,
                normalize=normalize, reduction=reduction, saved=Saved(*saved), want_anchor_grad=wants[0],
                want_candidate_grad=wants[1])
        return (grad_anchors if wants[0] else None, grad_candidates if wants[1] else None,
                None, None, None, None, None)
