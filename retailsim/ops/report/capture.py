"""What an op launches on the CUDA path, found on a machine without a GPU.

The op runs forward and backward on *fake* CUDA tensors (``torch._subclasses.FakeTensorMode``: shapes,
dtypes and strides, no data), so every launcher takes its CUDA branch and chooses its CUDA tiles. Two
recorders watch it:
  - Triton: ``JITFunction.run`` is replaced for the duration by a recorder that keeps the grid, the bound
    arguments and the launch options of every launch, and launches nothing;
  - aten: a dispatch mode counts the ops that launch a kernel on a GPU (views, allocations and metadata ops
    launch none) and the host-synchronising ones (``_local_scalar_dense``: ``.item()``, ``bool(t)``...).
Autograd cannot record fake CUDA tensors on a CPU-only build of torch (its nodes ask for a CUDA device
guard), so while recording every ``autograd.Function.apply`` runs the Function's ``forward`` by hand under
``no_grad`` with a stand-in context; afterwards each recorded Function's ``backward`` runs, last first, on
unit gradients. What is counted is thus the ops' Functions forward and backward and the aten ops of the
public function around them in forward (the backward of aten ops outside a Function is not seen).
``torch.cuda.get_device_properties`` answers with the target's SM count while recording, so launchers that
size their grid to the GPU do so for the arch being reported.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch no kernel on a GPU: allocations and metadata. Views are recognised by their schema.
NO_LAUNCH = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach", "lift_fresh",
    "alias", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_to_copy_noop",
    "resize_", "set_", "_reshape_alias", "device", "dim", "size", "stride", "numel",
}
HOST_SYNC = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal", "is_nonzero"}


@dataclass
class TritonLaunch:
    kernel: object          # the JITFunction
    grid: tuple
    args: dict              # parameter name -> value (fake tensors, ints, floats, constexpr values)
    options: dict           # num_warps, num_stages, ...

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@dataclass
class Capture:
    triton: list = field(default_factory=list)
    aten: dict = field(default_factory=dict)      # op name -> count of kernel-launching dispatches
    host_syncs: dict = field(default_factory=dict)
    mode: object = None
    functions: list = field(default_factory=list)  # (Function class, context, forward output) while recording

    @property
    def launches(self) -> int:
        return len(self.triton) + sum(self.aten.values())


class _CountingMode(TorchDispatchMode):
    def __init__(self, capture: Capture):
        super().__init__()
        self.capture = capture
        self.paused = False  # while the recorder makes its own tensors (the unit gradients)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if self.paused:
            pass
        elif name in HOST_SYNC:
            self.capture.host_syncs[name] = self.capture.host_syncs.get(name, 0) + 1
            if name == "_local_scalar_dense":  # fake tensors hold no value: answer "nothing wrong"
                return False if args[0].dtype == torch.bool else 0
        elif not (func.is_view or name in NO_LAUNCH):
            self.capture.aten[name] = self.capture.aten.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _index_ops(x, key):
    """``x[key]`` through aten ops. Python indexing takes a CUDA device guard first, which a CPU-only torch
    cannot give for fake CUDA tensors; the same aten ops need none. Basic and single-tensor indexing."""
    aten = torch.ops.aten
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = key.index(Ellipsis)
        explicit = sum(1 for k in key if k is not None and k is not Ellipsis)
        key = key[:at] + (slice(None),) * (x.dim() - explicit) + key[at + 1:]
    dim, tensor_index = 0, None
    for k in key:
        if k is None:
            x = aten.unsqueeze.default(x, dim)
            dim += 1
        elif isinstance(k, slice):
            x = aten.slice.Tensor(x, dim, k.start, k.stop, k.step or 1)
            dim += 1
        elif isinstance(k, int):
            x = aten.select.int(x, dim, k)
        elif isinstance(k, torch.Tensor):
            assert tensor_index is None, "one tensor index at most"
            tensor_index = (dim, k)
            dim += 1
        else:
            raise TypeError(f"kernel report: unsupported index {k!r}")
    return x, tensor_index


def _getitem(x, key):
    x, tensor_index = _index_ops(x, key)
    if tensor_index is None:
        return x
    dim, index = tensor_index
    return torch.ops.aten.index.Tensor(x, [None] * dim + [index])


def _setitem(x, key, value):
    view, tensor_index = _index_ops(x, key)
    value = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=x.dtype, device=x.device)
    if tensor_index is None:
        torch.ops.aten.copy_.default(view, value.expand(view.shape) if value.dim() < view.dim() else value)
    else:
        dim, index = tensor_index
        torch.ops.aten.index_put_.default(view, [None] * dim + [index], value)


class _Context:
    """Stands in for an autograd context: what ``forward`` saves and sets, read back by ``backward``."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass

    def mark_dirty(self, *tensors):
        pass


def _bind(kernel, args, kwargs) -> tuple[dict, dict]:
    names = kernel.arg_names
    bound = dict(zip(names, args))
    options = {}
    for key, value in kwargs.items():
        (bound if key in names else options)[key] = value
    for param in inspect.signature(kernel.fn).parameters.values():
        if param.name not in bound and param.default is not inspect.Parameter.empty:
            bound[param.name] = param.default
    return bound, options


@contextlib.contextmanager
def recording(capture: Capture, sm_count: int, capability: tuple[int, int] = (9, 0)):
    """Inside: Triton launches are recorded (not run), aten dispatches counted, CUDA reports ``sm_count`` SMs
    and compute ``capability``."""
    from triton.runtime.jit import JITFunction

    def record(self, *args, grid, warmup, **kwargs):
        bound, options = _bind(self, args, kwargs)
        grid = grid(bound) if callable(grid) else tuple(grid)
        capture.triton.append(TritonLaunch(self, tuple(grid) + (1,) * (3 - len(grid)), bound, options))
        return None

    def apply(cls, *args, **kwargs):
        needs = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        ctx = _Context(needs)
        with torch.no_grad():
            out = cls.forward(ctx, *args, **kwargs)
        capture.functions.append((cls, ctx, out))
        return out

    properties = SimpleNamespace(multi_processor_count=sm_count, name="report target", major=capability[0],
                                 minor=capability[1])
    saved_run, saved_props = JITFunction.run, torch.cuda.get_device_properties
    saved_apply = torch.autograd.Function.__dict__["apply"]
    saved_index = torch.Tensor.__getitem__, torch.Tensor.__setitem__
    JITFunction.run = record
    torch.Tensor.__getitem__, torch.Tensor.__setitem__ = _getitem, _setitem
    torch.autograd.Function.apply = classmethod(apply)
    torch.cuda.get_device_properties = lambda *a, **k: properties
    try:
        with _CountingMode(capture) as mode:
            capture.mode = mode
            yield
    finally:
        JITFunction.run, torch.cuda.get_device_properties = saved_run, saved_props
        torch.autograd.Function.apply = saved_apply
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = saved_index


def capture_call(make_inputs: Callable[[], tuple], call: Callable, sm_count: int,
                 capability: tuple[int, int] = (9, 0)) -> Capture:
    """Run ``call(*make_inputs())`` forward and, through its Functions' ``backward`` on unit gradients,
    backward, on fake CUDA tensors; return what it launched."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    capture = Capture()
    with FakeTensorMode(allow_non_fake_inputs=False):
        inputs = make_inputs()
        with recording(capture, sm_count, capability):
            with torch.no_grad():
                call(*inputs)
            for cls, ctx, out in reversed(capture.functions):
                outs = out if isinstance(out, tuple) else (out,)
                capture.mode.paused = True
                grads = [torch.ones_like(o) if isinstance(o, torch.Tensor) else None for o in outs]
                capture.mode.paused = False
                with torch.no_grad():
                    cls.backward(ctx, *grads)
    return capture
