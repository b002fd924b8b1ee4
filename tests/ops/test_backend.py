"""Dispatch rules of SPEC 6.1 and the promise that the kernel library imports without Triton or the extension."""
import os
import subprocess
import sys

import pytest
import torch

import retailsim
from retailsim import native
from retailsim.ops import backend


def test_auto_picks_triton_on_cuda_native_on_cpu_torch_on_mps(monkeypatch):
    monkeypatch.delenv("RETAILSIM_BACKEND", raising=False)
    assert backend.resolve("op", torch.device("mps"), has_native=True) == "torch"
    assert backend.resolve("op", torch.device("cpu"), has_native=False) == "torch"
    expected_cpu = "native" if native.available() else "torch"
    assert backend.resolve("op", torch.device("cpu"), has_native=True) == expected_cpu
    if backend.triton_importable():
        assert backend.resolve("op", torch.device("cuda"), has_native=True) == "triton"


def test_environment_variable_and_set_backend(monkeypatch):
    monkeypatch.setenv("RETAILSIM_BACKEND", "torch")
    assert backend.get_backend() == "torch"
    assert backend.resolve("op", torch.device("cpu"), has_native=True) == "torch"
    backend.set_backend("auto")  # set_backend wins over the environment
    assert backend.get_backend() == "auto"
    backend.set_backend(None)
    assert backend.get_backend() == "torch"


def test_unknown_backend_names_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="set_backend"):
        backend.set_backend("cuda")
    monkeypatch.setenv("RETAILSIM_BACKEND", "fast")
    with pytest.raises(ValueError, match="RETAILSIM_BACKEND"):
        backend.get_backend()


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    backend.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        backend.resolve("selective_scan", torch.device("cpu"), has_native=True)


def test_explicit_native_rules():
    backend.set_backend("native")
    assert backend.resolve("focal_loss", torch.device("cpu"), has_native=False) == "torch"
    with pytest.raises(RuntimeError, match="CPU tensors"):
        backend.resolve("selective_scan", torch.device("cuda"), has_native=True)


def test_explicit_native_without_extension_raises(monkeypatch):
    monkeypatch.setenv("RETAILSIM_NATIVE", "0")
    backend.set_backend("native")
    with pytest.raises(RuntimeError, match="not available"):
        backend.resolve("selective_scan", torch.device("cpu"), has_native=True)


def test_backend_info_reports_every_op_and_device():
    info = backend.backend_info()
    assert set(info["ops"]) == {"selective_scan", "focal_loss", "contrastive_loss", "causal_conv1d"}
    for per_device in info["ops"].values():
        assert set(per_device) == {"cpu", "cuda", "mps"}
    assert info["ops"]["causal_conv1d"]["cpu"] == ("native" if info["native_built"] else "torch")
    assert info["ops"]["causal_conv1d"]["mps"] == "torch"


def test_ops_import_and_run_without_triton_or_extension():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, retailsim, retailsim.ops as ops\n"
        "assert not ops.backend_info()['triton_installed']\n"
        "u = torch.randn(2, 4, 8)\n"
        "out = ops.selective_scan(u, torch.rand(2, 4, 8), -torch.rand(4, 3), torch.randn(2, 3, 8), torch.randn(2, 3, 8))\n"
        "assert out.shape == u.shape and torch.isfinite(out).all()\n"
        "assert torch.isfinite(ops.focal_loss(torch.randn(5, 7), torch.randint(0, 7, (5,))))\n"
        "print('ok')\n"
    )
    env = {**os.environ, "RETAILSIM_NATIVE": "0"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_extension_warns_once(monkeypatch):
    monkeypatch.setattr(native, "_module", native._UNSET)
    monkeypatch.setitem(sys.modules, "retailsim._native", None)  # import fails as if never built
    monkeypatch.delattr(retailsim, "_native", raising=False)
    monkeypatch.delenv("RETAILSIM_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning, match="not built") as record:
        assert native.load() is None
        assert native.load() is None
    assert len(record) == 1
