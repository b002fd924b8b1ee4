"""Fused, tiled InfoNCE-style contrastive loss with group and label exclusion (SPEC 6.4)."""
from __future__ import annotations

import torch

from retailsim.ops import backend
from retailsim.ops.contrastive_loss.function import CandidateIndex, ContrastiveLossFunction

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

__all__ = ["contrastive_loss"]


@torch.compiler.assume_constant_result  # torch.compile reads the choice once, when it traces
def _resolve(device_type: str) -> str:
    return backend.resolve("contrastive_loss", torch.device(device_type), has_native=False)


backend.register("contrastive_loss", lambda device: _resolve(device.type))


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor,
    anchor_group: torch.Tensor,
    candidate_group: torch.Tensor,
    candidate_label: torch.Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Contrastive (InfoNCE) loss of anchors against a shared pool of candidates, with exclusions.

    For anchor i with positive p = positive_index[i], with s_ij = cos(anchors[i], candidates[j]) / temperature
    (plain dot product / temperature when ``normalize=False``):

        loss_i = -s_ip + log sum_{j in A(i)} exp(s_ij),
        A(i) = {p} + {j : candidate_group[j] != anchor_group[i] and candidate_label[j] != candidate_label[p]}

    so candidates of the anchor's own group (e.g. its basket) and other copies of the positive's label (e.g.
    the same product) are not negatives. Anchors with positive_index -1 are ignored. Computed in tiles with an
    online log-sum-exp: no (N, M) matrix exists in the forward or the backward pass, on any backend.

    Args:
        anchors: (N, D) float32, float16, bfloat16 or float64; gradient returned.
        candidates: (M, D), same dtype and device as ``anchors``, M >= 1; gradient returned.
        positive_index: (N,) integer, each in [-1, M); -1 ignores the anchor. Another value raises on the
            CPU; on a GPU (checked without a host sync) the Triton kernels make that anchor's loss NaN.
        anchor_group: (N,) integer group id of each anchor.
        candidate_group: (M,) integer group id of each candidate.
        candidate_label: (M,) integer label of each candidate, or None for no label exclusion.
        temperature: > 0.
        normalize: cosine similarity (True) or raw dot products (False).
        reduction: ``"mean"`` over non-ignored anchors (0 when there are none), ``"sum"``, or ``"none"``
            for the (N,) per-anchor losses (0 for ignored anchors).

    Returns:
        The loss in ``anchors``' dtype: a scalar, or (N,) with ``reduction="none"``. Internally float32
        (float64 for float64 inputs); bf16/fp16 operands go to the tensor cores as they are.

    Backends (``retailsim.ops.backend``): Triton on CUDA (and on CPU under ``TRITON_INTERPRET=1``): five
    kernel launches per forward + backward, the normalisation, masks and reduction inside them; a chunked
    PyTorch path elsewhere; chosen before autograd records the call. Deterministic on every backend. Both
    run as ``torch.library`` custom ops under ``torch.compile`` (no graph break).

    Example:
        >>> import torch
        >>> from retailsim.ops import contrastive_loss
        >>> decoded = torch.randn(6, 32, requires_grad=True)         # 2 baskets x 3 items: anchors
        >>> products = torch.randn(6, 32, requires_grad=True)        # the same items' product embeddings
        >>> basket = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> positive = torch.tensor([1, 2, 0, 4, 5, -1])             # another item of the same basket
        >>> product_id = torch.tensor([10, 11, 12, 10, 13, 14])
        >>> loss = contrastive_loss(decoded, products, positive, basket, basket, product_id)
        >>> loss.backward()
        >>> loss.shape, decoded.grad.shape
        (torch.Size([]), torch.Size([6, 32]))
    """
    index, backend_name = _validated_index(anchors, candidates, positive_index, anchor_group, candidate_group,
                                           candidate_label, temperature, reduction)
    return ContrastiveLossFunction.apply(anchors, candidates, index, float(temperature), bool(normalize),
                                         reduction, backend_name)


def _check_ids(name: str, ids: torch.Tensor, length: int, length_name: str, device: torch.device) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex \
            or ids.dtype == torch.bool:
        raise TypeError(f"contrastive_loss: {name} must be an integer tensor, got "
                        f"{ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__}.")
    if ids.shape != (length,):
        raise ValueError(f"contrastive_loss: {name} must have shape ({length_name},) = ({length},), "
                         f"got {tuple(ids.shape)}.")
    if ids.device != device:
        raise ValueError(f"contrastive_loss: {name} must be on {device} like anchors, got {ids.device}.")


def _validated_index(anchors, candidates, positive_index, anchor_group, candidate_group, candidate_label,
                     temperature, reduction) -> tuple[CandidateIndex, str]:
    """The integer inputs as the kernels read them, and the backend that will run (after the checks: a
    non-tensor argument gets its sentence, not an AttributeError)."""
    for name, x in (("anchors", anchors), ("candidates", candidates)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError(f"contrastive_loss: {name} must be a 2-D tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}.")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"contrastive_loss: {name} must be float32, float16, bfloat16 or float64, got {x.dtype}.")
    if candidates.dtype != anchors.dtype or candidates.device != anchors.device:
        raise ValueError(f"contrastive_loss: candidates must have anchors' dtype and device ({anchors.dtype}, "
                         f"{anchors.device}), got ({candidates.dtype}, {candidates.device}).")
    if candidates.shape[1] != anchors.shape[1]:
        raise ValueError(f"contrastive_loss: candidates must have anchors' feature size D = {anchors.shape[1]}, "
                         f"got {candidates.shape[1]}.")
    if candidates.shape[0] == 0:
        raise ValueError("contrastive_loss: candidates must have at least one row.")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"contrastive_loss: temperature must be a positive number, got {temperature!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"contrastive_loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}.")
    num_anchors, num_candidates = anchors.shape[0], candidates.shape[0]
    _check_ids("positive_index", positive_index, num_anchors, "N", anchors.device)
    _check_ids("anchor_group", anchor_group, num_anchors, "N", anchors.device)
    _check_ids("candidate_group", candidate_group, num_candidates, "M", anchors.device)
    if candidate_label is not None:
        _check_ids("candidate_label", candidate_label, num_candidates, "M", anchors.device)

    backend_name = _resolve(anchors.device.type)
    positive_index = positive_index.to(torch.int64).contiguous()
    message = f"contrastive_loss: positive_index values must lie in [-1, M) = [-1, {num_candidates})."
    if anchors.device.type == "cpu" and not torch.compiler.is_compiling():
        if num_anchors and not bool(((positive_index >= -1) & (positive_index < num_candidates)).all()):
            raise ValueError(message)
    elif backend_name != "triton":
        # The Triton kernels turn such an anchor's loss into NaN (no host sync); the PyTorch path would index
        # out of range, so there the check runs on the device, without a host sync either.
        torch._assert_async(((positive_index >= -1) & (positive_index < num_candidates)).all(), message)
    index = CandidateIndex(
        positive_index=positive_index,
        anchor_group=anchor_group.to(torch.int64).contiguous(),
        candidate_group=candidate_group.to(torch.int64).contiguous(),
        candidate_label=None if candidate_label is None else candidate_label.to(torch.int64).contiguous(),
    )
    return index, backend_name
