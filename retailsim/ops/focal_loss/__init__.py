"""Softmax focal loss, alone (``focal_loss``) and fused with the output projection (``linear_focal_loss``).

FL_i = -alpha[y_i] (1 - p_{i,y_i})^gamma log p_{i,y_i}, p_i = softmax(logits_i) (Lin et al., 2017, in its
multi-class softmax form). ``focal_loss``: the forward reads the logits once (loss and per-row statistics),
the backward once more to write the gradient. ``linear_focal_loss``: on CUDA (Triton) the contrastive loss's
kernels with the weight rows as candidates, logits only ever in registers (``linear_triton.py``); elsewhere
row chunks of logits, each chunk's gradient computed with its loss.
CUDA tensors run the Triton kernels, other devices the chunked PyTorch path (SPEC 6.1, 6.3).
"""
from __future__ import annotations

import torch

from retailsim.ops import backend as _backend
from retailsim.ops.focal_loss.function import (
    FocalLossFunction,
    FusedLinearFocalLossFunction,
    LinearFocalLossFunction,
)

__all__ = ["focal_loss", "linear_focal_loss"]

REDUCTIONS = ("mean", "sum", "none")
_backend.register("focal_loss", lambda device: _backend.resolve("focal_loss", device, has_native=False))


def _check_common(target, n_classes, gamma, alpha, reduction, device, ignore_index):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}.")
    if not isinstance(gamma, (int, float)) or not gamma >= 0:
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}.")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"target must be an integer tensor of class indices, got dtype {target.dtype}.")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the logits are on {device}.")
    if alpha is not None:
        if not isinstance(alpha, torch.Tensor) or alpha.shape != (n_classes,) or not alpha.is_floating_point():
            raise ValueError(f"alpha must be a floating-point tensor of shape ({n_classes},), one weight per class.")
        if alpha.device != device:
            raise ValueError(f"alpha is on {alpha.device} but the logits are on {device}.")
        if alpha.requires_grad:
            raise ValueError("alpha must not require grad: focal_loss treats the class weights as constants.")
    # Checking the targets' range on an accelerator would need a host sync; there an out-of-range target gives a
    # NaN loss instead. On the CPU the check is free, so it raises (except while torch.compile traces).
    if device.type == "cpu" and target.numel() and not torch.compiler.is_compiling():
        bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
        if bool(bad.any()):
            raise ValueError(
                f"target must hold class indices in [0, {n_classes}) or ignore_index={ignore_index}, "
                f"got {target[bad][0].item()}."
            )


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Softmax focal loss over the last dimension: ``-alpha[y] (1 - p_y)^gamma log p_y``.

    Args:
        logits: (..., V) float32, float16, bfloat16 or float64; math is fp32 (fp64 for fp64 input).
        target: (...) integer class indices in [0, V), or ``ignore_index`` for rows that do not count.
        gamma: focusing exponent >= 0; ``gamma=0`` is cross-entropy (equal to ``F.cross_entropy`` when
            ``alpha`` is None).
        alpha: optional (V,) per-class weights (constants, no gradient). Unlike ``F.cross_entropy(weight=)``,
            ``mean`` still divides by the number of rows, not by the sum of their weights.
        ignore_index: target value of rows that contribute 0 loss and 0 gradient.
        reduction: ``"mean"`` (over non-ignored rows; 0 when every row is ignored), ``"sum"`` or ``"none"``.
        inplace_backward: the backward writes the gradient over ``logits`` instead of a new (..., V) buffer
            (saves that much memory). Their values are the gradient's afterwards (a leaf's ``.grad`` may
            share their memory), and another backward that needs them raises autograd's in-place error.
            Ignored under ``torch.compile``, which never lets an op write its inputs.

    Returns:
        A scalar, or (...) per-row losses for ``"none"``, in logits' dtype. An out-of-range target raises on
        the CPU and gives NaN on an accelerator (checking there would need a host sync); a NaN logit makes
        its row's loss NaN. The backward reads logits, target and alpha again: changing one of them in
        place before it runs raises autograd's in-place error.

    Example:
        >>> logits = torch.randn(8, 100, requires_grad=True)
        >>> target = torch.randint(0, 100, (8,))
        >>> focal_loss(logits, target, gamma=2.0).backward()
    """
    if logits.dim() < 1 or logits.shape[:-1] != target.shape:
        raise ValueError(
            f"logits must be (..., V) with target (...): got logits {tuple(logits.shape)}, "
            f"target {tuple(target.shape)}."
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}.")
    n_classes = logits.shape[-1]
    _check_common(target, n_classes, gamma, alpha, reduction, logits.device, ignore_index)
    backend = _backend.resolve("focal_loss", logits.device, has_native=False)
    logits2d = logits.reshape(-1, n_classes)  # (N, V)
    if logits2d.stride(-1) != 1:
        logits2d = logits2d.contiguous()
    alpha = None if alpha is None else alpha.detach().contiguous()
    loss = FocalLossFunction.apply(
        logits2d, target.reshape(-1).contiguous(), alpha, float(gamma), int(ignore_index), reduction, backend,
        bool(inplace_backward) and logits2d.data_ptr() == logits.data_ptr() and logits2d.is_contiguous(),
    )
    return loss.reshape(target.shape) if reduction == "none" else loss


def linear_focal_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``focal_loss(hidden @ weight.T + bias, target, ...)`` without ever holding all N x V logits.

    On CUDA (the Triton backend) four kernels per forward + backward, no logits in memory at all: the forward
    streams the vocabulary in tiles (online log-sum-exp on the tensor cores, plus the softmax-weighted sum of
    weight rows the hidden gradient needs), one program reduces, and the backward recomputes the logit tiles
    once for the weight and bias gradients; its extra memory is O(N H), whatever V. Reduction ``"none"``
    costs no extra matrix product. An out-of-range target gives a NaN loss there (no host sync).

    Elsewhere (the PyTorch path) rows are processed in chunks of at most 128 MiB of logits
    (``function.LOGITS_CHUNK_BYTES``): each chunk's logits come from one matmul, the focal kernel turns them
    in place into their gradient, and two more matmuls fold that into the hidden and weight gradients (fp32
    accumulation across chunks). Gradients are computed in the forward pass (reduction ``"none"``: in
    backward, recomputing the chunks, since they need the per-row grad_output).

    Args:
        hidden: (..., H) float32, float16, bfloat16 or float64.
        weight: (V, H) output projection, same dtype and device as ``hidden``.
        target: (...) integer class indices in [0, V) or ``ignore_index``.
        bias: optional (V,).
        gamma, alpha, ignore_index, reduction: as in :func:`focal_loss`.

    Returns:
        A scalar, or (...) for ``"none"``, in hidden's dtype.

    Example:
        >>> hidden = torch.randn(4, 16, 64, requires_grad=True)
        >>> weight = torch.randn(5003, 64, requires_grad=True)
        >>> target = torch.randint(0, 5003, (4, 16))
        >>> linear_focal_loss(hidden, weight, target).backward()
    """
    if hidden.dim() < 1 or hidden.shape[:-1] != target.shape:
        raise ValueError(
            f"hidden must be (..., H) with target (...): got hidden {tuple(hidden.shape)}, "
            f"target {tuple(target.shape)}."
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}."
        )
    if not hidden.is_floating_point() or weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise TypeError(
            f"hidden and weight must be floating-point tensors of one dtype and device, got {hidden.dtype} on "
            f"{hidden.device} and {weight.dtype} on {weight.device}."
        )
    n_classes = weight.shape[0]
    if bias is not None and (bias.shape != (n_classes,) or bias.dtype != hidden.dtype or bias.device != hidden.device):
        raise ValueError(f"bias must be a ({n_classes},) tensor of hidden's dtype and device, got {tuple(bias.shape)}.")
    _check_common(target, n_classes, gamma, alpha, reduction, hidden.device, ignore_index)
    backend = _backend.resolve("focal_loss", hidden.device, has_native=False)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    alpha = None if alpha is None else alpha.detach().contiguous()
    if backend == "triton":
        loss = FusedLinearFocalLossFunction.apply(
            hidden2d, weight, target.reshape(-1).contiguous(), bias, alpha, float(gamma), int(ignore_index), reduction)
        return loss.reshape(target.shape) if reduction == "none" else loss
    loss = LinearFocalLossFunction.apply(
        hidden2d, weight, target.reshape(-1).contiguous(), bias, alpha, float(gamma), int(ignore_index), reduction,
        backend
    )
    return loss.reshape(target.shape) if reduction == "none" else loss
