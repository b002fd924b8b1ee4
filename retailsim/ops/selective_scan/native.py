"""Launchers of the C++ CPU selective scan (``kernels/selective_scan.cpp`` in ``retailsim._native``).

Same contract as ``torch_scan.py``::

    selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> (out, last_state, saved)
    selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved)
        -> (du, ddelta, dA, dB, dC, dD, ddelta_bias, dz)

on CPU torch tensors. The kernel works on NumPy buffers of one dtype, float32 (bf16/fp16 inputs are upcast
into a copy); u, delta, z, dout, B and C are passed as views at their own strides (the model's transposed and
sliced projections are read in place), the small A, D, delta_bias as contiguous copies. Results come back as
float32 tensors sharing the kernel's buffers, out and du in u's layout, ddelta in delta's and dz in z's (a
time-major (batch, L, dim) input gets time-major outputs, which the next matmul reads without a copy).
float64 inputs stay float64 (the same kernel built for double, used by the gradchecks). ``saved`` is
``(checkpoints,)``: the state every 64 steps, (batch, dim, ceil(L/64) - 1, N).

Threads: ``set_num_threads(n)`` (``retailsim.native``'s, shared with the causal conv); by default as many as
``torch.get_num_threads()``. Results are bitwise the same for every thread count.
"""
from __future__ import annotations

import numpy as np
import torch

from retailsim import native
from retailsim.native import get_num_threads, set_num_threads  # noqa: F401 - shared by both C++ kernels


def available() -> bool:
    """Whether the extension is loaded (and allowed) and carries this kernel."""
    module = native.load()
    return module is not None and hasattr(module, "selective_scan_fwd")


def _kernel():
    module = native.load()
    if module is None or not hasattr(module, "selective_scan_fwd"):
        raise RuntimeError(
            "selective_scan: the C++ kernel is not available (retailsim._native not built, built without "
            "kernels/selective_scan.cpp, or RETAILSIM_NATIVE=0)."
        )
    return module


_STRIDED = frozenset({"u", "delta", "z", "dout", "B", "C"})  # read by the kernel through their strides


def _as_array(name: str, tensor: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
    """A NumPy view of ``tensor`` in ``dtype``: at its own strides for the arrays the kernel reads strided,
    C-contiguous for the others (copied only where the dtype or the strides ask for it)."""
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.device.type != "cpu":
        raise ValueError(f"selective_scan: the C++ kernel runs on CPU tensors, {name} is on {tensor.device}.")
    if not tensor.is_floating_point():
        raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {tensor.dtype}.")
    return native.as_numpy(tensor, dtype, strided=name in _STRIDED)


def _tensors(*arrays):
    return tuple(None if a is None else torch.from_numpy(a) for a in arrays)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """(out (batch, dim, L), last_state (batch, dim, N), saved) in float32 (float64 for float64 u)."""
    work = native.work_dtype(u)
    arrays = [_as_array(n, t, work) for n, t in zip(
        ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), (u, delta, A, B, C, D, z, delta_bias))]
    out, last_state, checkpoints = _kernel().selective_scan_fwd(
        *arrays, delta_softplus=bool(delta_softplus), num_threads=get_num_threads()
    )
    out, last_state, checkpoints = _tensors(out, last_state, checkpoints)
    return out, last_state, (checkpoints,)


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias, dz), None where the input was None."""
    work = native.work_dtype(u)
    (checkpoints,) = saved
    arrays = [_as_array(n, t, work) for n, t in zip(
        ("u", "delta", "A", "B", "C"), (u, delta, A, B, C))]
    optional = {n: _as_array(n, t, work) for n, t in (("D", D), ("z", z), ("delta_bias", delta_bias))}
    grads = _kernel().selective_scan_bwd(
        _as_array("dout", dout, work), *arrays, _as_array("checkpoints", checkpoints, work),
        **optional, delta_softplus=bool(delta_softplus), num_threads=get_num_threads(),
    )
    return _tensors(*grads)
