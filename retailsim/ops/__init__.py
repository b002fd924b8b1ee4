"""RetailSim's kernel library, usable on its own: ``selective_scan``, ``focal_loss``,
``linear_focal_loss``, ``contrastive_loss`` and the causal depthwise conv, each with Triton (CUDA), C++ (CPU,
where written) and PyTorch paths chosen by :mod:`retailsim.ops.backend`.
"""
from retailsim.ops.backend import backend_info, get_backend, set_backend
from retailsim.ops.causal_conv import causal_conv1d
from retailsim.ops.contrastive_loss import contrastive_loss
from retailsim.ops.focal_loss import focal_loss, linear_focal_loss
from retailsim.ops.selective_scan import selective_scan

__all__ = [
    "backend_info",
    "causal_conv1d",
    "contrastive_loss",
    "focal_loss",
    "get_backend",
    "linear_focal_loss",
    "selective_scan",
    "set_backend",
]
