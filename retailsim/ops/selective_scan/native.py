"""Launchers of the C++ CPU selective scan (``kernels/selective_scan.cpp`` in ``retailsim._native``).

The launcher contract of ``contract.py`` (keyword-only ``forward`` / ``backward``, ``checkpoint_shape``,
``config_for``) on CPU torch tensors. The kernel works on NumPy buffers of one dtype, float32 (bf16/fp16 inputs are upcast
into a copy); u, delta, z, dout, B and C are passed as views at their own strides (the model's transposed and
sliced projections are read in place), the small A, D, delta_bias as contiguous copies. Results come back as
float32 tensors sharing the kernel's buffers, out and du in u's layout, ddelta in delta's and dz in z's (a
time-major (batch, L, dim) input gets time-major outputs, which the next matmul reads without a copy).
float64 inputs stay float64 (the same kernel built for double, used by the gradchecks). ``checkpoints`` is
the state every CHUNK = 64 steps, (batch, dim, ceil(L/64) - 1, N).

Threads: ``set_num_threads(n)`` (``retailsim.native``'s, shared with the causal conv); by default as many as
``torch.get_num_threads()``. Results are bitwise the same for every thread count.
"""
from __future__ import annotations

import numpy as np
import torch

from retailsim import native
from retailsim.native import get_num_threads, set_num_threads  # noqa: F401 - shared by both C++ kernels
from retailsim.ops.selective_scan.contract import ScanForward, ScanGrads

CHUNK = 64  # kChunk in kernels/selective_scan.cpp: steps between two checkpoints


def config_for(shape: tuple, dtype: torch.dtype, arch: str | None = None) -> dict:
    """{"chunk": steps between checkpoints, "threads": worker threads} for (batch, dim, L, N)."""
    return {"chunk": CHUNK, "threads": get_num_threads()}


def checkpoint_shape(batch: int, dim: int, length: int, dstate: int, groups: int, save_states: bool = True) -> tuple:
    """The state at the end of every chunk but the last: (batch, dim, ceil(L / 64) - 1, N)."""
    return (batch, dim, max(0, -(-length // CHUNK) - 1), dstate)


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


def forward(*, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
            save_states=True) -> ScanForward:
    """out (batch, dim, L), last_state (batch, dim, N), checkpoints, in float32 (float64 for float64 u); the
    checkpoints are always written (their cost is a copy of the state every 64 steps)."""
    work = native.work_dtype(u)
    arrays = [_as_array(n, t, work) for n, t in zip(
        ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), (u, delta, A, B, C, D, z, delta_bias))]
    out, last_state, checkpoints = _kernel().selective_scan_fwd(
        *arrays, delta_softplus=bool(delta_softplus), num_threads=get_num_threads()
    )
    return ScanForward(*_tensors(out, last_state, checkpoints))


def backward(*, dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             checkpoints) -> ScanGrads:
    """Every gradient, None where the input was None."""
    work = native.work_dtype(u)
    arrays = [_as_array(n, t, work) for n, t in zip(
        ("u", "delta", "A", "B", "C"), (u, delta, A, B, C))]
    optional = {n: _as_array(n, t, work) for n, t in (("D", D), ("z", z), ("delta_bias", delta_bias))}
    grads = _kernel().selective_scan_bwd(
        _as_array("dout", dout, work), *arrays, _as_array("checkpoints", checkpoints, work),
        **optional, delta_softplus=bool(delta_softplus), num_threads=get_num_threads(),
    )
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = _tensors(*grads)  # the C++ kernel's order
    return ScanGrads(du=du, ddelta=ddelta, dA=dA, dB=dB, dC=dC, dD=dD, dz=dz, ddelta_bias=ddelta_bias)
