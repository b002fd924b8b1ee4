"""Autograd Functions of ``focal_loss`` and ``linear_focal_loss``.

The forward pass computes the loss and every gradient at once (one pass over the logits); backward only
multiplies the saved gradients by ``grad_output``. The work itself sits in ``torch.library`` custom ops, so
``torch.compile`` treats it as one opaque call instead of tracing (or breaking on) a Triton launch or a
Python loop over row chunks. The backend ("triton" or "torch") is resolved by the caller and passed in.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from retailsim.ops.focal_loss import torch_path

LOGITS_CHUNK_BYTES = 64 << 20  # one chunk of linear_focal_loss logits (then gradient) at most


def _rows_fn(backend: str):
    if backend == "triton":
        return importlib.import_module("retailsim.ops.focal_loss.triton").focal_loss_rows
    return torch_path.focal_loss_rows


def _reduce(per_row: torch.Tensor, n_valid: Optional[torch.Tensor], reduction: str, dtype) -> torch.Tensor:
    if reduction == "none":
        return per_row.to(dtype)
    total = per_row.sum()
    if reduction == "mean":
        total = total / n_valid.clamp(min=1).to(total.dtype)
    return total.to(dtype)


def _count_valid(target: torch.Tensor, ignore_index: int, reduction: str) -> Optional[torch.Tensor]:
    return (target != ignore_index).sum() if reduction == "mean" else None


# ---------------------------------------------------------------------------------------------- focal_loss
@torch.library.custom_op("retailsim::focal_loss_forward", mutates_args=())
def focal_loss_forward(
    logits: torch.Tensor, target: torch.Tensor, alpha: Optional[torch.Tensor], gamma: float, ignore_index: int,
    reduction: str, compute_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), target (N,) -> (loss: () or (N,) in logits' dtype, gradient (N, V) or empty)."""
    n_valid = _count_valid(target, ignore_index, reduction)
    per_row, grad = _rows_fn(backend)(
        logits, target, alpha, gamma, ignore_index, reduction, compute_grad, n_valid=n_valid
    )
    loss = _reduce(per_row, n_valid, reduction, logits.dtype)
    return loss, grad if compute_grad else logits.new_empty(0)


@focal_loss_forward.register_fake
def _(logits, target, alpha, gamma, ignore_index, reduction, compute_grad, backend):
    loss = logits.new_empty(logits.shape[:1] if reduction == "none" else ())
    return loss, torch.empty_like(logits) if compute_grad else logits.new_empty(0)


class FocalLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, alpha, gamma, ignore_index, reduction, backend):
        loss, grad = focal_loss_forward(
            logits, target, alpha, gamma, ignore_index, reduction, ctx.needs_input_grad[0], backend
        )
        ctx.reduction = reduction
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        scale = grad_loss[:, None] if ctx.reduction == "none" else grad_loss
        return grad * scale.to(grad.dtype), None, None, None, None, None, None


# --------------------------------------------------------------------------------------- linear_focal_loss
def chunk_rows(n_cols: int, element_size: int, chunk_bytes: int | None = None) -> int:
    """Rows of logits one chunk holds: ``chunk_bytes`` of (rows, V) values, at least one row."""
    return max(1, (chunk_bytes or LOGITS_CHUNK_BYTES) // max(1, n_cols * element_size))


def _slices(n: int, size: int):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _linear_chunks(
    hidden, weight, target, bias, alpha, gamma, ignore_index, reduction, needs, backend, row_scale=None,
    chunk_bytes: int | None = None,
):
    """Row chunks of logits = hidden @ weight.T + bias, each turned in place into its gradient by the focal
    kernel, then folded into grad_hidden / grad_weight / grad_bias (fp32 accumulation across chunks).
    ``row_scale`` (N,) multiplies each row's gradient (backward of reduction "none")."""
    need_hidden, need_weight, need_bias = needs
    compute_grad = any(needs)
    n_rows, n_cols = hidden.shape[0], weight.shape[0]
    rows_fn = _rows_fn(backend)
    step = chunk_rows(n_cols, hidden.element_size(), chunk_bytes)
    single_chunk = step >= n_rows
    accumulate_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    kernel_reduction = "none" if row_scale is not None else reduction
    n_valid = _count_valid(target, ignore_index, kernel_reduction)

    per_row = torch.empty(n_rows, dtype=accumulate_dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    grad_weight = None
    if need_weight and not (single_chunk and weight.dtype != accumulate_dtype):
        grad_weight = torch.zeros(weight.shape, dtype=accumulate_dtype, device=weight.device)  # (V, H)
    grad_bias = torch.zeros(n_cols, dtype=accumulate_dtype, device=hidden.device) if need_bias else None
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        hidden_chunk = hidden[rows]  # (R, H)
        if bias is None:
            logits = hidden_chunk @ weight.T  # (R, V)
        else:
            logits = torch.addmm(bias, hidden_chunk, weight.T)
        chunk_loss, dlogits = rows_fn(
            logits, target[rows], alpha, gamma, ignore_index, kernel_reduction, compute_grad,
            grad_out=logits, n_valid=n_valid,
        )
        per_row[rows] = chunk_loss
        if not compute_grad:
            continue
        if row_scale is not None:
            dlogits.mul_(row_scale[rows, None].to(dlogits.dtype))
        if need_hidden:
            torch.mm(dlogits, weight, out=grad_hidden[rows])
        if need_weight:
            if grad_weight is None:  # one low-precision chunk: cuBLAS accumulates in fp32 already
                grad_weight = dlogits.T @ hidden_chunk
            elif dlogits.dtype == accumulate_dtype:
                grad_weight.addmm_(dlogits.T, hidden_chunk)
            else:  # low precision, several chunks: bf16/fp16 products, fp32 sum, the temporary sliced along V
                for cols in _slices(n_cols, step * max(1, n_cols // hidden.shape[1])):
                    grad_weight[cols] += dlogits[:, cols].T @ hidden_chunk  # the add casts on the fly
        if need_bias:
            grad_bias += dlogits.sum(dim=0, dtype=accumulate_dtype)
    grad_weight = weight.new_empty(0) if grad_weight is None else grad_weight.to(weight.dtype)
    grad_bias = hidden.new_empty(0) if grad_bias is None else grad_bias.to(bias.dtype)
    return _reduce(per_row, n_valid, kernel_reduction, hidden.dtype), grad_hidden, grad_weight, grad_bias


@torch.library.custom_op("retailsim::linear_focal_loss_forward", mutates_args=())
def linear_focal_loss_forward(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor], gamma: float, ignore_index: int, reduction: str, need_hidden: bool,
    need_weight: bool, need_bias: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias); a gradient not asked for is an empty tensor."""
    return _linear_chunks(
        hidden, weight, target, bias, alpha, gamma, ignore_index, reduction,
        (need_hidden, need_weight, need_bias), backend,
    )


@linear_focal_loss_forward.register_fake
def _(hidden, weight, target, bias, alpha, gamma, ignore_index, reduction, need_hidden, need_weight, need_bias,
      backend):
    loss = hidden.new_empty(hidden.shape[:1] if reduction == "none" else ())
    return (
        loss,
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else weight.new_empty(0),
        torch.empty_like(bias) if need_bias else hidden.new_empty(0),
    )


@torch.library.custom_op("retailsim::linear_focal_loss_backward_rows", mutates_args=())
def linear_focal_loss_backward_rows(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor], grad_rows: torch.Tensor, gamma: float, ignore_index: int, need_hidden: bool,
    need_weight: bool, need_bias: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of reduction "none": the per-row grad_output is known only now, so the chunks are recomputed."""
    _, grad_hidden, grad_weight, grad_bias = _linear_chunks(
        hidden, weight, target, bias, alpha, gamma, ignore_index, "none",
        (need_hidden, need_weight, need_bias), backend, row_scale=grad_rows,
    )
    return grad_hidden, grad_weight, grad_bias


@linear_focal_loss_backward_rows.register_fake
def _(hidden, weight, target, bias, alpha, grad_rows, gamma, ignore_index, need_hidden, need_weight, need_bias,
      backend):
    return (
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else weight.new_empty(0),
        torch.empty_like(bias) if need_bias else hidden.new_empty(0),
    )


class LinearFocalLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, alpha, gamma, ignore_index, reduction, backend):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3])
        ctx.reduction, ctx.needs = reduction, needs
        ctx.focal_args = (gamma, ignore_index, backend)
        # Reduction "none" needs the per-row grad_output, so its gradients wait for backward.
        eager_grads = reduction != "none"
        loss, grad_hidden, grad_weight, grad_bias = linear_focal_loss_forward(
            hidden, weight, target, bias, alpha, gamma, ignore_index, reduction,
            *(need and eager_grads for need in needs), backend,
        )
        if eager_grads:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        else:
            ctx.save_for_backward(hidden, weight, target, bias, alpha)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        need_hidden, need_weight, need_bias = ctx.needs
        if ctx.reduction == "none":
            hidden, weight, target, bias, alpha = ctx.saved_tensors
            gamma, ignore_index, backend = ctx.focal_args
            grad_hidden, grad_weight, grad_bias = linear_focal_loss_backward_rows(
                hidden, weight, target, bias, alpha, grad_loss, gamma, ignore_index, *ctx.needs, backend
            )
        else:
            grad_hidden, grad_weight, grad_bias = (
                grad * grad_loss.to(grad.dtype) for grad in ctx.saved_tensors
            )
        return (
            grad_hidden if need_hidden else None,
            grad_weight if need_weight else None,
            None,
            grad_bias if need_bias else None,
            None, None, None, None, None,
        )
