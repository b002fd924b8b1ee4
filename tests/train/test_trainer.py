"""The Trainer recipe end to end on a tiny cache and the tiny preset (SPEC 5): checkpoints, resume, NaN stop,
DDP, backends and the command line."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from retailsim.cli import module_main
from retailsim.data.loader import make_loader
from retailsim.ops import set_backend
from retailsim.train import checkpoint as ckpt
from retailsim.train.loss import WorldModelLoss
from retailsim.train.trainer import (NonFiniteLossError, TrainConfig, Trainer, TrainStep, build_world_model,
                                     wrap_distributed)


def make_config(cache, out, **overrides) -> TrainConfig:
    settings = dict(data=cache, out=out, preset="tiny", epochs=3, batch_size=32, lr=1e-3, device="cpu", seed=7,
                    patience=0, log_every=1, progress=False)
    return TrainConfig(**{**settings, **overrides})


def step_losses(out: Path) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line["kind"] == "step"]


@pytest.fixture
def torch_backend():
    set_backend("torch")


def test_checkpoints_hold_every_spec_key_and_load_weights_only(tiny_cache, tiny_model_factory, tmp_path,
                                                               torch_backend):
    out = tmp_path / "run"
    record = Trainer(make_config(tiny_cache, out, epochs=2), model_factory=tiny_model_factory).run()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "metrics.jsonl"] or \
        names == ["best_model.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "metrics.jsonl", "tensorboard"]
    state = torch.load(out / "checkpoint_epoch_2.pt", weights_only=True)
    assert set(ckpt.REQUIRED_KEYS) <= set(state)
    assert state["epoch"] == 2 and state["global_step"] == record["global_step"] == 2 * 6  # 163 baskets / 32
    assert state["best_val_loss"] == pytest.approx(min(record["best_val_loss"], state["best_val_loss"]))
    assert set(state["rng_state"]) >= {"torch", "numpy", "python"}
    from retailsim.model import WorldModelConfig

    rebuilt = build_world_model("tiny", tiny_cache, False, state["config"])
    assert WorldModelConfig.from_dict(state["config"]).preset == "tiny"
    rebuilt.load_state_dict(state["model_state_dict"])
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["best_val_loss"] == state["best_val_loss"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if line["kind"] == "epoch"]
    assert [line["epoch"] for line in epochs] == [1, 2]
    for line in epochs:
        assert {"train_loss", "val_loss", "lr", "samples_per_s", "phase"} <= set(line)
    steps = [line for line in lines if line["kind"] == "step"]
    assert len(steps) == 12 and all({"loss", "lr", "samples_per_s", "phase", "focal"} <= set(s) for s in steps)


def test_val_batches_validates_on_the_first_batches_only(tiny_cache, tiny_model_factory, tmp_path, torch_backend):
    trainer = Trainer(make_config(tiny_cache, tmp_path / "run", epochs=1, batch_size=16, val_batches=1),
                      model_factory=tiny_model_factory)
    record = trainer.run()
    # the first batch in split order (no length bucketing, which would put the shortest histories first)
    batches = list(make_loader(tiny_cache, "validation", batch_size=16, train=False, bucket=False, seed=7))
    assert len(batches) >= 2  # otherwise the cap would change nothing
    trainer.step_module.eval()
    with torch.no_grad():
        first = float(trainer.step_module(batches[0])[0])
        whole = sum(float(trainer.step_module(b)[0]) * len(b) for b in batches) / sum(len(b) for b in batches)
    assert record["val_loss"] == pytest.approx(first, rel=1e-6)
    assert abs(record["val_loss"] - whole) > 1e-4


def dropout_model_factory(preset, data, gradient_checkpointing, config=None):
    """The tiny preset with dropout on, so resuming must restore the torch RNG too."""
    from retailsim.model import WorldModelConfig, data_sizes_from_cache

    config = config or WorldModelConfig.from_name("tiny", dropout=0.2, **data_sizes_from_cache(data)).to_dict()
    return build_world_model("tiny", data, gradient_checkpointing, config)


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_cache, tmp_path, monkeypatch, torch_backend):
    tiny_model_factory = dropout_model_factory
    Trainer(make_config(tiny_cache, tmp_path / "full"), model_factory=tiny_model_factory).run()
    full = step_losses(tmp_path / "full")

    original = Trainer.train_epoch

    def interrupted(self, epoch, phase):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, phase)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config(tiny_cache, tmp_path / "cut"), model_factory=tiny_model_factory).run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert not (tmp_path / "cut" / "checkpoint_epoch_3.pt").exists()
    Trainer(make_config(tiny_cache, tmp_path / "cut"), resume=tmp_path / "cut" / "checkpoint_epoch_2.pt",
            model_factory=tiny_model_factory).run()
    resumed = step_losses(tmp_path / "cut")
    assert len(full) == 18 and resumed == full  # bit for bit, the finetune epoch included
    a = torch.load(tmp_path / "full" / "checkpoint_epoch_3.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint_epoch_3.pt", weights_only=True)
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tiny_cache, tiny_model_factory, tmp_path,
                                                                   monkeypatch, torch_backend):
    original = TrainStep.forward
    state = {"epoch": 0}
    original_epoch = Trainer.train_epoch

    def tracking_epoch(self, epoch, phase):
        state["epoch"] = epoch
        return original_epoch(self, epoch, phase)

    def poisoned(self, batch, all_tasks=True):
        total, parts = original(self, batch, all_tasks)
        return (total * float("nan"), parts) if self.training and state["epoch"] == 2 else (total, parts)

    monkeypatch.setattr(Trainer, "train_epoch", tracking_epoch)
    monkeypatch.setattr(TrainStep, "forward", poisoned)
    out = tmp_path / "run"
    trainer = Trainer(make_config(tiny_cache, out), model_factory=tiny_model_factory)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.run()
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt" or p.name.startswith(".")) == \
        ["best_model.pt", "checkpoint_epoch_1.pt"]  # no partial or temporary file
    good = torch.load(out / "checkpoint_epoch_1.pt", weights_only=True)
    assert good["epoch"] == 1 and all(torch.isfinite(t).all() for t in good["model_state_dict"].values()
                                      if t.is_floating_point())
    # the command line says so and exits non-zero
    code = module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(tmp_path / "cli"),
                                               "--preset", "tiny", "--epochs", "3", "--batch-size", "32",
                                               "--device", "cpu", "--backend", "torch", "--quiet"])
    assert code == 1


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs"),
    (["--preset", "huge"], "--preset"),
    (["--device", "tpu"], "--device"),
    (["--lr", "-1"], "--lr"),
    (["--grad-accum", "0"], "--grad-accum"),
    (["--backend", "cuda"], "--backend"),
    (["--val-batches", "-1"], "--val-batches"),
], ids=["epochs", "preset", "device", "lr", "grad-accum", "backend", "val-batches"])
def test_cli_rejects_bad_flags_with_exit_2(tiny_cache, tmp_path, capsys, flags, message):
    code = module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(tmp_path), *flags])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_rejects_a_folder_that_is_not_a_cache_and_a_bad_checkpoint(tiny_cache, tmp_path, capsys):
    assert module_main("retailsim.train.cli", ["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a tensor cache" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(tmp_path / "o"),
                                               "--resume", str(junk)]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        module_main("retailsim.train.cli", ["--epochs", "many"])
    assert exit_info.value.code == 2


def test_cli_trains_end_to_end(tiny_cache, tmp_path, capsys):
    code = module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(tmp_path), "--preset", "tiny",
                                               "--epochs", "1", "--batch-size", "64", "--device", "cpu",
                                               "--backend", "torch", "--grad-accum", "2", "--quiet"])
    assert code == 0 and "trained to epoch 1 (2 steps)" in capsys.readouterr().out
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["global_step"] == 2


# --- DistributedDataParallel ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cache: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    set_backend("torch")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grads = {}
    for all_tasks in (False, True):  # warm-up leaves the aux heads unused: DDP must cope
        torch.manual_seed(0)
        model = build_world_model("tiny", Path(cache), False)
        step = wrap_distributed(TrainStep(model, WorldModelLoss()), torch.device("cpu"))
        batch = next(iter(make_loader(cache, "train", batch_size=16, seed=1, num_replicas=world, rank=rank)))
        total, _ = step(batch, all_tasks=all_tasks)
        total.backward()
        grads[all_tasks] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save(grads, Path(out) / "ddp_grads.pt")
    dist.destroy_process_group()
    # the torchrun path: the Trainer initialises the process group from the environment
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_PORT=str(port + 1))
    config = TrainConfig(data=Path(cache), out=Path(out) / "trainer", preset="tiny", epochs=1, batch_size=32,
                         device="cpu", seed=3, patience=0, log_every=1, progress=False)
    Trainer(config).run()


def test_ddp_two_gloo_processes_match_one_process(tiny_cache, tmp_path, torch_backend):
    port = _free_port()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tiny_cache), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    for all_tasks in (False, True):
        torch.manual_seed(0)
        model = build_world_model("tiny", tiny_cache, False)
        step = TrainStep(model, WorldModelLoss())
        losses = [step(next(iter(make_loader(tiny_cache, "train", batch_size=16, seed=1, num_replicas=2, rank=r))),
                       all_tasks=all_tasks)[0] for r in range(2)]
        (sum(losses) / 2).backward()  # DDP averages the ranks' gradients
        single = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        assert set(single) <= set(ddp[all_tasks])
        for name, grad in single.items():
            assert torch.allclose(ddp[all_tasks][name], grad, rtol=1e-4, atol=1e-7), name
        if not all_tasks:
            assert all(float(ddp[False][n].abs().sum()) == 0 for n in ddp[False] if n.startswith("aux_heads"))
    lines = [json.loads(line) for line in (tmp_path / "trainer" / "metrics.jsonl").read_text().splitlines()]
    # 163 baskets: 6 batches of 32, 3 per rank
    assert [line["global_step"] for line in lines if line["kind"] == "step"] == [1, 2, 3]
    assert torch.load(tmp_path / "trainer" / "checkpoint_epoch_1.pt", weights_only=True)["global_step"] == 3


# --- backends ---------------------------------------------------------------------------------------------------

def backend_curves(cache, factory, root, device="cpu", batch_size=32, epochs=4) -> dict[str, torch.Tensor]:
    curves = {}
    for name in ("torch", "triton"):
        set_backend(name)
        Trainer(make_config(cache, root / name, epochs=epochs, max_steps=20, batch_size=batch_size, device=device),
                model_factory=factory).run()
        curves[name] = torch.tensor(step_losses(root / name), dtype=torch.float64)
    assert len(curves["torch"]) == 20
    return curves


def test_every_triton_kernel_and_torch_give_the_same_loss_curve(tiny_cache, tmp_path, monkeypatch):
    """20 training steps of the tiny preset with every op on Triton through the interpreter — selective scan
    forward and backward, fused focal and contrastive losses — against every op on PyTorch.

    Batch 2 and an 8-purchase history keep it to ~4 s a step: the interpreter runs the scan's
    tl.associative_scan one element at a time, so its cost is batch x d_inner x d_state x chunk per call."""
    from retailsim.ops import backend

    if not backend.triton_runs_on(torch.device("cpu")):
        pytest.skip("the Triton interpreter is not available (Triton missing or TRITON_INTERPRET unset)")
    resolve = backend.resolve
    used = set()

    def recording(op, device, has_native):
        chosen = resolve(op, device, has_native)
        used.add((op, chosen))
        return chosen

    def short_history(preset, data, gradient_checkpointing, config=None):
        return build_world_model("tiny", data, gradient_checkpointing, config, max_history=8)

    monkeypatch.setattr(backend, "resolve", recording)
    # 2 epochs are all main phase, so every step runs both fused losses
    curves = backend_curves(tiny_cache, short_history, tmp_path, batch_size=2, epochs=2)
    assert {(op, "triton") for op in ("selective_scan", "focal_loss", "contrastive_loss")} <= used
    assert torch.allclose(curves["triton"], curves["torch"], rtol=1e-4, atol=1e-5), curves["triton"] - curves["torch"]


@pytest.mark.cuda
def test_triton_and_torch_backends_give_the_same_loss_curve_on_cuda(tiny_cache, tiny_model_factory, tmp_path):
    """Every kernel on Triton vs every op on PyTorch, 20 steps under bf16 autocast on the GPU."""
    curves = backend_curves(tiny_cache, tiny_model_factory, tmp_path, device="cuda")
    assert torch.allclose(curves["triton"], curves["torch"], rtol=2e-2, atol=1e-2), curves["triton"] - curves["torch"]


@pytest.mark.parametrize("promotions", [False, True])
def test_the_batches_carry_the_plan_only_for_a_model_that_reads_it(tiny_cache, tiny_model_factory, tmp_path,
                                                                    promotions, torch_backend):
    # the generated cache has a plan; building its lists for a model that ignores them is wasted collate work
    trainer = Trainer(make_config(tiny_cache, tmp_path / "run", promotions=promotions),
                      model_factory=tiny_model_factory)
    trainer.setup()
    try:
        for loader in (trainer.train_loader(0.15), trainer.validation_loader()):
            assert bool(next(iter(loader)).promotion_valid.any()) == promotions
    finally:
        trainer.cleanup()
