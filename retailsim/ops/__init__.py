"""RetailSim's kernel library, usable on its own: ``selective_scan``, ``focal_loss``,
``linear_focal_loss``, ``contrastive_loss`` and the causal depthwise conv, each with Triton (CUDA), C++ (CPU,
where written) and PyTorch paths chosen by :mod:`retailsim.ops.backend`.
"""
from retailsim.ops.backend import backend_info, get_backend, set_backend
from retailsim.ops.causal_conv import causal_conv1d  # noqa: F401
from retailsim.ops.selective_scan import selective_scan  # noqa: F401
from retailsim.ops.contrastive_loss import contrastive_loss
from retailsim.ops.focal_loss import focal_loss, linear_focal_loss  # noqa: F401

__all__ = ["backend_info", "get_backend", "set_backend"]
