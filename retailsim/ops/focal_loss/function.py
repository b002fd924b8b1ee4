"""Autograd Functions of ``focal_loss`` and ``linear_focal_loss``.

``focal_loss``: the forward reads the logits once for the loss and each row's (lse, ce); the backward reads
them again and writes the gradient with ``grad_output`` applied. ``linear_focal_loss``, PyTorch path: each row
chunk's gradient is computed with its loss in the forward (reduction "none": recomputed in backward), and
backward multiplies by ``grad_output``; Triton path (``FusedLinearFocalLossFunction``): the kernels of
``linear_triton.py``, no logits in memory. The work itself sits in ``torch.library`` custom ops, so
``torch.compile`` treats it as one opaque call instead of tracing (or breaking on) a Triton launch or a
Python loop over row chunks; eager calls run the same Python implementation without the dispatcher round
trip. The backend ("triton" or "torch") is resolved by the caller and passed in.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from retailsim.ops.contrastive_loss.contract import Saved
from retailsim.ops.focal_loss import torch_path

# One chunk of linear_focal_loss logits (then gradient) at most. Measured on an H100 at 8192 x 512 x 131072
# bf16, fwd+bwd: 64 MiB chunks 18.2 ms / 456 MB peak, 128 MiB 11.7 ms / 384 MB, 256 MiB 9.1 ms / 640 MB (the
# fp32 grad_weight is read and written once per chunk, so fewer chunks are faster).
LOGITS_CHUNK_BYTES = 128 << 20
# cuBLAS takes its fast (sm90) kernels only when leading dimensions are multiples of 16 bytes; an odd V such as
# 5003 fell back to sm75 kernels at ~70 TFLOP/s. V is padded with zero weight rows to a multiple of this.
MATMUL_ALIGN = 8
PAD_OFF_CUDA = False  # CPU BLAS does not care (and the copy costs); tests switch it on to cover the padded path


def launcher_module(backend: str):
    """The launcher module of backend ``backend`` (contract.py); Triton is imported only when it runs."""
    if backend == "triton":
        return importlib.import_module("retailsim.ops.focal_loss.triton")
    return torch_path


def _reduce(per_row: torch.Tensor, n_valid: Optional[torch.Tensor], reduction: str, dtype) -> torch.Tensor:
    if reduction == "none":
        return per_row.to(dtype)
    total = per_row.sum()
    if reduction == "mean":
        total = total / n_valid.clamp(min=1)
    return total.to(dtype)


def _count_valid(target: torch.Tensor, ignore_index: int, reduction: str) -> Optional[torch.Tensor]:
    return (target != ignore_index).sum() if reduction == "mean" else None


# ---------------------------------------------------------------------------------------------- focal_loss
# Three passes over the logits and three launches on the GPU per fwd+bwd: the forward reads them once for the
# per-row loss and (lse, ce), one program reduces the rows (sum or mean, and the count the mean divides by,
# all on the device), and the backward reads them again to write the gradient, grad_output's scale included.
def _focal_loss_forward_impl(
    logits: torch.Tensor, target: torch.Tensor, alpha: Optional[torch.Tensor], gamma: float, ignore_index: int,
    reduction: str, compute_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (N, V), target (N,) -> (loss: () or (N,) in logits' dtype, per-row (lse, ce) (N, 2) when
    ``compute_grad`` (else empty), the () count of rows that count for the mean (else empty))."""
    launcher = launcher_module(backend)
    rows = launcher.forward(
        logits=logits, target=target, alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction,
        compute_grad=False, save_stats=compute_grad, loss_dtype=logits.dtype if reduction == "none" else None)
    stats = rows.stats if compute_grad else logits.new_empty(0)
    if reduction == "none":
        return rows.loss, stats, target.new_empty(0)
    loss, n_valid = launcher.reduce(loss_rows=rows.loss, target=target, ignore_index=ignore_index,
                                    reduction=reduction, out_dtype=logits.dtype)
    return loss, stats, n_valid if reduction == "mean" else target.new_empty(0)


@torch.library.custom_op("retailsim::focal_loss_forward", mutates_args=())
def focal_loss_forward(
    logits: torch.Tensor, target: torch.Tensor, alpha: Optional[torch.Tensor], gamma: float, ignore_index: int,
    reduction: str, compute_grad: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _focal_loss_forward_impl(logits, target, alpha, gamma, ignore_index, reduction, compute_grad, backend)


@focal_loss_forward.register_fake
def _(logits, target, alpha, gamma, ignore_index, reduction, compute_grad, backend):
    loss = logits.new_empty(logits.shape[:1] if reduction == "none" else ())
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    stats = logits.new_empty((logits.shape[0], 2), dtype=work) if compute_grad else logits.new_empty(0)
    return loss, stats, target.new_empty((), dtype=torch.int64) if reduction == "mean" else target.new_empty(0)


def _focal_loss_backward_impl(
    logits: torch.Tensor, target: torch.Tensor, alpha: Optional[torch.Tensor], stats: torch.Tensor,
    n_valid: torch.Tensor, grad_loss: torch.Tensor, gamma: float, ignore_index: int, reduction: str, backend: str,
    grad_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The gradient (N, V) in logits' dtype; ``grad_out`` (eager only): where it goes, ``logits`` for in place."""
    return launcher_module(backend).backward(
        logits=logits, target=target, alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction,
        stats=stats, grad_loss=grad_loss, n_valid=n_valid if reduction == "mean" else None, grad_out=grad_out)


@torch.library.custom_op("retailsim::focal_loss_backward", mutates_args=())
def focal_loss_backward(
    logits: torch.Tensor, target: torch.Tensor, alpha: Optional[torch.Tensor], stats: torch.Tensor,
    n_valid: torch.Tensor, grad_loss: torch.Tensor, gamma: float, ignore_index: int, reduction: str, backend: str,
) -> torch.Tensor:
    return _focal_loss_backward_impl(logits, target, alpha, stats, n_valid, grad_loss, gamma, ignore_index,
                                     reduction, backend)


@focal_loss_backward.register_fake
def _(logits, target, alpha, stats, n_valid, grad_loss, gamma, ignore_index, reduction, backend):
    return torch.empty_like(logits)


class FocalLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, alpha, gamma, ignore_index, reduction, backend, inplace_backward=False):
        compute_grad = ctx.needs_input_grad[0]
        args = (logits, target, alpha, gamma, ignore_index, reduction, compute_grad, backend)
        compiling = torch.compiler.is_compiling()
        # Eager calls skip the dispatcher round trip of the custom op (host time is most of a small call).
        loss, stats, n_valid = focal_loss_forward(*args) if compiling else _focal_loss_forward_impl(*args)
        ctx.focal_args = (gamma, ignore_index, reduction, backend)
        ctx.inplace = inplace_backward and not compiling  # a custom op may not write its inputs
        ctx.save_for_backward(logits, target, alpha, stats, n_valid)
        return loss

    @staticmethod
    @once_differentiable  # the gradient has no graph behind it: a second derivative raises, never comes back wrong
    def backward(ctx, grad_loss):
        logits, target, alpha, stats, n_valid = ctx.saved_tensors
        gamma, ignore_index, reduction, backend = ctx.focal_args
        args = (logits, target, alpha, stats, n_valid, grad_loss, gamma, ignore_index, reduction, backend)
        if torch.compiler.is_compiling():
            grad = focal_loss_backward(*args)
        elif ctx.inplace:
            grad = _focal_loss_backward_impl(*args, grad_out=logits)
            # Another node that saved the logits now refuses to run on the overwritten values.
            torch.autograd.graph.increment_version(logits)
        else:
            grad = _focal_loss_backward_impl(*args)
        return grad, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------- linear_focal_loss
def chunk_rows(n_cols: int, element_size: int, chunk_bytes: int | None = None) -> int:
    """Rows of logits one chunk holds: ``chunk_bytes`` of (rows, V) values, at least one row."""
    return max(1, (chunk_bytes or LOGITS_CHUNK_BYTES) // max(1, n_cols * element_size))


def _slices(n: int, size: int):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


_OUT_DTYPE_MATMUL = {"works": None}  # does torch.addmm(..., out_dtype=float32) run here? Tried once.


def _addmm_fp32_(accumulator, a, b, max_rows_per_temp):
    """accumulator (fp32) += a @ b for bf16/fp16 a, b. Where torch has it (CUDA, torch >= 2.8) the matmul
    adds into the fp32 accumulator itself (cuBLAS: low-precision inputs, fp32 C, beta = 1); elsewhere a
    low-precision product per slice of ``max_rows_per_temp`` rows is added, the add casting on the fly."""
    if _OUT_DTYPE_MATMUL["works"] is not False and accumulator.is_cuda:
        try:
            torch.addmm(accumulator, a, b, out_dtype=accumulator.dtype, out=accumulator)
            _OUT_DTYPE_MATMUL["works"] = True
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _OUT_DTYPE_MATMUL["works"] = False
    for rows in _slices(accumulator.shape[0], max_rows_per_temp):
        accumulator[rows] += a[rows] @ b


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
    launcher = launcher_module(backend)
    step = chunk_rows(n_cols, hidden.element_size(), chunk_bytes)
    single_chunk = 0 < n_rows <= step
    accumulate_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    pad = -n_cols % MATMUL_ALIGN if (hidden.is_cuda or PAD_OFF_CUDA) else 0
    if pad:  # zero rows: their logits are 0 (bias padded with 0 too) and their gradient is zeroed below
        weight = torch.nn.functional.pad(weight, (0, 0, 0, pad))  # (V_pad, H)
        bias = None if bias is None else torch.nn.functional.pad(bias, (0, pad))
    kernel_reduction = "none" if row_scale is not None else reduction
    n_valid = _count_valid(target, ignore_index, kernel_reduction)

    per_row = None if single_chunk else torch.empty(n_rows, dtype=accumulate_dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    grad_weight = None
    if need_weight and not (single_chunk and weight.dtype != accumulate_dtype):
        grad_weight = torch.zeros(weight.shape, dtype=accumulate_dtype, device=weight.device)  # (V_pad, H)
    grad_bias = torch.zeros(n_cols + pad, dtype=accumulate_dtype, device=hidden.device) if need_bias else None
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        hidden_chunk = hidden[rows]  # (R, H)
        if bias is None:
            logits = hidden_chunk @ weight.T  # (R, V_pad)
        else:
            logits = torch.addmm(bias, hidden_chunk, weight.T)
        chunk_loss = launcher.forward(
            logits=logits[:, :n_cols], target=target[rows], alpha=alpha, gamma=gamma, ignore_index=ignore_index,
            reduction=kernel_reduction, compute_grad=compute_grad, grad_out=logits[:, :n_cols], n_valid=n_valid).loss
        dlogits = logits  # (R, V_pad), the gradient now
        if pad and compute_grad:
            dlogits[:, n_cols:].zero_()
        if single_chunk:
            per_row = chunk_loss
        else:
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
            else:
                _addmm_fp32_(grad_weight, dlogits.T, hidden_chunk, step * max(1, n_cols // hidden.shape[1]))
        if need_bias:
            grad_bias += dlogits.sum(dim=0, dtype=accumulate_dtype)
    grad_weight = weight.new_empty(0) if grad_weight is None else grad_weight[:n_cols].to(weight.dtype)
    grad_bias = hidden.new_empty(0) if grad_bias is None else grad_bias[:n_cols].to(bias.dtype)
    return _reduce(per_row, n_valid, kernel_reduction, hidden.dtype), grad_hidden, grad_weight, grad_bias


def _linear_focal_loss_forward_impl(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor], gamma: float, ignore_index: int, reduction: str, need_hidden: bool,
    need_weight: bool, need_bias: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight, grad_bias); a gradient not asked for is an empty tensor."""
    return _linear_chunks(
        hidden, weight, target, bias, alpha, gamma, ignore_index, reduction,
        (need_hidden, need_weight, need_bias), backend,
    )


linear_focal_loss_forward = torch.library.custom_op(
    "retailsim::linear_focal_loss_forward", _linear_focal_loss_forward_impl, mutates_args=()
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
        forward = linear_focal_loss_forward if torch.compiler.is_compiling() else _linear_focal_loss_forward_impl
        loss, grad_hidden, grad_weight, grad_bias = forward(
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


# ----------------------------------------------------------------------- linear_focal_loss, fused (Triton)
# The Triton backend runs linear_focal_loss on the contrastive loss's kernels (linear_triton.py): no logits
# chunks at all, four launches per forward + backward. Custom ops for torch.compile, as for the other losses.
def _fused():
    return importlib.import_module("retailsim.ops.focal_loss.linear_triton")


@torch.library.custom_op("retailsim::linear_focal_fused_forward", mutates_args=())
def linear_focal_fused_forward(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor], gamma: float, ignore_index: int, reduction: str, want_hidden_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, *Saved)."""
    loss, saved = _fused().forward(hidden=hidden, weight=weight, target=target, bias=bias, alpha=alpha,
                                   gamma=gamma, ignore_index=ignore_index, reduction=reduction,
                                   want_hidden_grad=want_hidden_grad)
    return (loss, *saved)


@linear_focal_fused_forward.register_fake
def _(hidden, weight, target, bias, alpha, gamma, ignore_index, reduction, want_hidden_grad):
    work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    shapes = _fused().saved_shapes(hidden.shape[0], weight.shape[0], hidden.shape[1], hidden.dtype, hidden.device,
                                   want_hidden_grad)
    loss = hidden.new_empty(hidden.shape[:1] if reduction == "none" else ())
    return (loss, *(hidden.new_empty(shape, dtype=work) for shape in shapes))


@torch.library.custom_op("retailsim::linear_focal_fused_backward", mutates_args=())
def linear_focal_fused_backward(
    grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
    bias: Optional[torch.Tensor], alpha: Optional[torch.Tensor], norms: torch.Tensor, row_stats: torch.Tensor,
    n_valid: torch.Tensor, weighted: torch.Tensor, split_weight: torch.Tensor, candidate_grad_unit: torch.Tensor,
    gamma: float, ignore_index: int, reduction: str, need_hidden: bool, need_weight: bool, need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fused().backward(
        grad_loss=grad_loss, hidden=hidden, weight=weight, target=target, bias=bias, alpha=alpha, gamma=gamma,
        ignore_index=ignore_index, reduction=reduction,
        saved=Saved(norms, row_stats, n_valid, weighted, split_weight, candidate_grad_unit),
        needs=(need_hidden, need_weight, need_bias))


@linear_focal_fused_backward.register_fake
def _(grad_loss, hidden, weight, target, bias, alpha, norms, row_stats, n_valid, weighted, split_weight,
      candidate_grad_unit, gamma, ignore_index, reduction, need_hidden, need_weight, need_bias):
    return (torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
            torch.empty_like(weight) if need_weight else weight.new_empty(0),
            torch.empty_like(bias) if need_bias else hidden.new_empty(0))


class FusedLinearFocalLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, bias, alpha, gamma, ignore_index, reduction):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3])
        if torch.compiler.is_compiling():
            loss, *saved = linear_focal_fused_forward(hidden, weight, target, bias, alpha, gamma, ignore_index,
                                                      reduction, needs[0])
        else:
            loss, saved = _fused().forward(hidden=hidden, weight=weight, target=target, bias=bias, alpha=alpha,
                                           gamma=gamma, ignore_index=ignore_index, reduction=reduction,
                                           want_hidden_grad=needs[0])
        ctx.options = (gamma, ignore_index, reduction, needs)
        ctx.save_for_backward(hidden, weight, target, bias, alpha, *saved)
        return loss

    @staticmethod
    @once_differentiable  # the backward is hand-written; a second derivative raises instead of being wrong
    def backward(ctx, grad_loss):
        hidden, weight, target, bias, alpha, *saved = ctx.saved_tensors
        gamma, ignore_index, reduction, needs = ctx.options
        if torch.compiler.is_compiling():
            grads = linear_focal_fused_backward(grad_loss, hidden, weight, target, bias, alpha, *saved, gamma,
                                                ignore_index, reduction, *needs)
        else:
            grads = _fused().backward(grad_loss=grad_loss, hidden=hidden, weight=weight, target=target, bias=bias,
                                      alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction,
                                      saved=Saved(*saved), needs=needs)
        grad_hidden, grad_weight, grad_bias = grads
        return (grad_hidden if needs[0] else None, grad_weight if needs[1] else None, None,
                grad_bias if needs[2] else None, None, None, None, None)
