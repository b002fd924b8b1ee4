"""linear_focal_loss on the Triton backend: the contrastive loss's kernels with the weight rows as candidates.

Both losses are a softmax over candidate rows scored by a matrix product: s_ij = h_i . w_j + b_j here, with no
normalisation, no exclusions, the target as each row's positive and the focal transform on each row's
cross-entropy ce_i. The focal gradient is a per-row multiple of the softmax gradient,
dFL_i/ds_ij = f'(ce_i) (P_ij - [j = y_i]) (focal_loss/triton.py derives f'), so the contrastive kernels' row
weight w_i only gains that factor, which the loss kernel writes. Four launches per forward + backward and four
matrix products, the recomputation of the logits included; no (N, V) buffer at any point:
  forward   per row block: the online log-sum-exp over the vocabulary tiles (logits on the tensor cores), the
            target's logit, and O_i = sum_j P_ij w_j when the hidden rows need a gradient
  loss      one program: each row's focal loss, f'(ce_i), the sum or mean, the count of rows that count
  weight    per vocabulary block: dW_j = sum_i w_i f'(ce_i) (P_ij - [j = y_i]) h_i (and the bias gradient),
            the logits recomputed from the saved (max, 1 / sum), written in the weight's dtype
  hidden    one row per program: dh_i = w_i f'(ce_i) (O_i - w_{y_i})
The per-row upstream gradient (reduction "none", the copy head's path) is read by the last two, so it costs no
extra matrix product. An out-of-range target gives a NaN loss on the GPU (no host sync), as focal_loss does.
"""
from __future__ import annotations

import torch

from retailsim.ops.contrastive_loss import triton as softmax_rows
from retailsim.ops.contrastive_loss.contract import FocalTerms, Saved
from retailsim.ops.contrastive_loss.function import CandidateIndex


def _index(target: torch.Tensor) -> CandidateIndex:
    target = target if target.dtype == torch.int64 else target.long()
    return CandidateIndex(target, None, None, None)


def forward(*, hidden, weight, target, bias, alpha, gamma: float, ignore_index: int, reduction: str,
            want_hidden_grad: bool) -> tuple[torch.Tensor, Saved]:
    """The loss (in hidden's dtype) and what backward needs; hidden (N, H), weight (V, H), target (N,)."""
    return softmax_rows.softmax_forward(
        anchors=hidden, candidates=weight, index=_index(target), scale=1.0, normalize=False, reduction=reduction,
        want_anchor_grad=want_hidden_grad, focal=FocalTerms(gamma, alpha, ignore_index), bias=bias)


def backward(*, grad_loss, hidden, weight, target, bias, alpha, gamma: float, ignore_index: int, reduction: str,
             saved: Saved, needs: tuple[bool, bool, bool]):
    """(grad_hidden, grad_weight, grad_bias) in their inputs' dtypes; a 0-element tensor where not needed."""
    return softmax_rows.softmax_backward(
        grad_loss=grad_loss, anchors=hidden, candidates=weight, index=_index(target), scale=1.0, normalize=False,
        reduction=reduction, saved=saved, want_anchor_grad=needs[0], want_candidate_grad=needs[1],
        focal=FocalTerms(gamma, alpha, ignore_index), bias=bias, want_bias_grad=needs[2])


def saved_shapes(rows: int, vocab: int, hidden_size: int, dtype, device, want_hidden_grad: bool) -> Saved:
    return softmax_rows.saved_shapes(rows, vocab, hidden_size, dtype, device, False, "none", want_hidden_grad,
                                     True, focal=True)


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None) -> dict:
    """The tiles of (N, H, V): those of the contrastive kernels for (N, V, H)."""
    rows, hidden_size, vocab = shape
    return softmax_rows.config_for((rows, vocab, hidden_size), dtype, arch)
