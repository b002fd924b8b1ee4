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
import triton

from retailsim.ops.contrastive_loss import triton as softmax_rows
from retailsim.ops.contrastive_loss.contract import FocalTerms, Saved
from retailsim.ops.contrastive_loss.function import CandidateIndex


def _config(hidden, weight) -> dict:
    return config_for((hidden.shape[0], hidden.shape[1], weight.shape[0]), hidden.dtype,
                      softmax_rows.arch_of(hidden.device))


def _index(target: torch.Tensor) -> CandidateIndex:
    target = target if target.dtype == torch.int64 else target.long()
    return CandidateIndex(target, None, None, None)


def forward(*, hidden, weight, target, bias, alpha, gamma: float, ignore_index: int, reduction: str,
            want_hidden_grad: bool) -> tuple[torch.Tensor, Saved]:
    """The loss (in hidden's dtype) and what backward needs; hidden (N, H), weight (V, H), target (N,)."""
    return softmax_rows.softmax_forward(
        anchors=hidden, candidates=weight, index=_index(target), scale=1.0, normalize=False, reduction=reduction,
        want_anchor_grad=want_hidden_grad, focal=FocalTerms(gamma, alpha, ignore_index), bias=bias,
        config=_config(hidden, weight))


def backward(*, grad_loss, hidden, weight, target, bias, alpha, gamma: float, ignore_index: int, reduction: str,
             saved: Saved, needs: tuple[bool, bool, bool]):
    """(grad_hidden, grad_weight, grad_bias) in their inputs' dtypes; a 0-element tensor where not needed."""
    return softmax_rows.softmax_backward(
        grad_loss=grad_loss, anchors=hidden, candidates=weight, index=_index(target), scale=1.0, normalize=False,
        reduction=reduction, saved=saved, want_anchor_grad=needs[0], want_candidate_grad=needs[1],
        focal=FocalTerms(gamma, alpha, ignore_index), bias=bias, want_bias_grad=needs[2],
        config=_config(hidden, weight))


def saved_shapes(rows: int, vocab: int, hidden_size: int, dtype, device, want_hidden_grad: bool) -> Saved:
    config = config_for((rows, hidden_size, vocab), dtype, softmax_rows.arch_of(device))
    return softmax_rows.saved_shapes(rows, vocab, hidden_size, dtype, device, False, "none", want_hidden_grad,
                                     True, focal=True, config=config)


# sm_90, bf16/fp16: 64 x 64 score tiles and one pipeline stage for the forward and weight-gradient kernels. Without
# the contrastive loss's groups and labels they fit in 255 registers without spilling, and the wider tile gets
# the warpgroup MMA (wgmma): at 8192 x 512 x 131072 the estimates fell from 4.57 to 2.55 ms (forward, floor
# 2.22) and from 4.68 to 2.28 ms (weight gradient, floor 1.11; it recomputes the logits). On sm_80 the same
# tiles spill (112 B) and gain nothing (the kernels are tensor-core-bound there), so it keeps the shared ones.
_SM90_HALF_TILES = {
    "_contrastive_fwd_kernel": dict(BLOCK_M=64, num_stages=1),
    "_contrastive_bwd_candidate_kernel": dict(BLOCK_N=64, BLOCK_M=64, num_stages=1),
}


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None) -> dict:
    """The tiles of (N, H, V): the contrastive kernels' for (N, V, H), with this op's own on sm_90 (above)."""
    rows, hidden_size, vocab = shape
    config = softmax_rows.config_for((rows, vocab, hidden_size), dtype, arch)
    if arch == "sm_90" and dtype in (torch.bfloat16, torch.float16):
        for kernel, tiles in _SM90_HALF_TILES.items():
            config[kernel] = {**tiles, **config.get(kernel, {})}
        # With half the SMs' worth of vocabulary blocks or more, one split: the kernel then writes the weight
        # gradient itself (no fp32 partials, no second kernel over V rows, and no 24 B spill of the partial
        # variant); at 2048 x 512 x 5003 (79 blocks) 0.036 ms against 0.038 ms plus the merge for two splits.
        candidate = config["_contrastive_bwd_candidate_kernel"]
        if "splits" not in candidate and triton.cdiv(vocab, candidate["BLOCK_M"]) >= 64:
            candidate["splits"] = 1
    return config
