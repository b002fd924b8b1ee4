"""What the trainer refuses so that no run is lost or silently spliced: a folder holding an earlier run, a second
trainer on the same --out, a resume with other settings or other data, a damaged checkpoint, a NaN validation
loss; and what a resume keeps (one record per step in metrics.jsonl)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from retailsim.cli import main as retailsim_main
from retailsim.cli import module_main
from retailsim.data.atomic_output import lock_path
from retailsim.errors import RetailSimInputError
from retailsim.train.trainer import NonFiniteLossError, Trainer, TrainStep
from tests.data.test_atomic_output import hold_claim
from tests.train.test_trainer import make_config

RESUMED = ["--device", "cpu", "--backend", "torch", "--log-every", "1", "--quiet"]  # not run settings
TRAIN = ["--preset", "tiny", "--batch-size", "32", "--lr", "1e-3", "--seed", "7", *RESUMED]


@pytest.fixture(autouse=True)
def torch_backend():
    from retailsim.ops import set_backend

    set_backend("torch")


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tiny_cache, tiny_model_factory, tmp_path):
    out = tmp_path / "run"
    Trainer(make_config(tiny_cache, out, epochs=2), model_factory=tiny_model_factory).run()
    best, log = (out / "best_model.pt").read_bytes(), (out / "metrics.jsonl").read_text()
    with pytest.raises(RetailSimInputError, match="holds an earlier run .*--resume .*--overwrite"):
        Trainer(make_config(tiny_cache, out, epochs=1), model_factory=tiny_model_factory)
    assert (out / "best_model.pt").read_bytes() == best and (out / "metrics.jsonl").read_text() == log
    Trainer(make_config(tiny_cache, out, epochs=1, overwrite=True), model_factory=tiny_model_factory).run()
    # the earlier run is gone whole: no epoch-2 checkpoint of it left mixed in with the new run
    assert sorted(p.name for p in out.glob("*.pt")) == ["best_model.pt", "checkpoint_epoch_1.pt"]
    assert [r["epoch"] for r in _records(out) if r["kind"] == "epoch"] == [1]


def test_a_second_trainer_on_the_same_out_is_refused(tiny_cache, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "retailsim.train", "--data", str(tiny_cache), "--out", str(out),
               "--epochs", "3", *TRAIN]
    holder = hold_claim(out)  # the first trainer, holding its claim for as long as the test needs
    try:
        second = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and "being written by another RetailSim process" in second.stderr, second.stderr
    assert not out.exists() or not list(out.iterdir())
    # the claim is the trainer's own for its whole run, and gone after it
    trainer = Trainer(make_config(tiny_cache, out, epochs=1))
    trainer.setup()
    try:
        with pytest.raises(RetailSimInputError, match="being written by another"):
            Trainer(make_config(tiny_cache, out, epochs=1))
    finally:
        trainer.cleanup()
    assert not lock_path(out).exists()


def test_resume_never_writes_into_another_runs_folder_nor_past_later_checkpoints(tiny_cache, tiny_model_factory,
                                                                                 tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        Trainer(make_config(tiny_cache, out, epochs=3, max_steps=12), model_factory=tiny_model_factory).run()
    with pytest.raises(RetailSimInputError, match="holds an earlier run"):
        Trainer(make_config(tiny_cache, b, epochs=3), resume=a / "checkpoint_epoch_1.pt")
    with pytest.raises(RetailSimInputError, match="holds later checkpoints .checkpoint_epoch_2.pt"):
        Trainer(make_config(tiny_cache, a, epochs=3), resume=a / "checkpoint_epoch_1.pt")
    # branching from an early checkpoint into a new folder is fine
    Trainer(make_config(tiny_cache, tmp_path / "branch", epochs=3), resume=a / "checkpoint_epoch_1.pt",
            model_factory=tiny_model_factory).run()


def test_resume_takes_the_checkpoints_settings_and_logs_each_step_once(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(out), "--epochs", "3",
                                               "--max-steps", "6", *TRAIN]) == 0
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_epoch_1.pt"]
    # what a run killed in epoch 2 leaves: its steps after the checkpoint, and a line cut mid-write
    with open(out / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"kind": "step", "epoch": 2, "global_step": 7, "loss": 1.0}) + "\n")
        log.write('{"kind": "step", "epo')
    capsys.readouterr()
    # no --preset/--batch-size/--epochs/--lr given: the checkpoint's are used (tiny, 32, 3, 1e-3)
    assert module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(out), "--resume",
                                               str(out / "checkpoint_epoch_1.pt"), *RESUMED]) == 0
    records = _records(out)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["global_step"] for r in records if r["kind"] == "step"] == list(range(1, 19))
    assert all(r.get("loss") != 1.0 for r in records)


@pytest.mark.parametrize("flags, differs", [
    (["--batch-size", "16"], "batch_size 32 -> 16"),
    (["--preset", "small"], "preset 'tiny' -> 'small'"),
    (["--epochs", "5"], "epochs 3 -> 5"),
    (["--lr", "0.01"], "lr 0.001 -> 0.01"),
    (["--promotions"], "promotions False -> True"),
], ids=["batch-size", "preset", "epochs", "lr", "promotions"])
def test_resume_with_other_settings_says_what_differs(tiny_cache, tmp_path, capsys, flags, differs):
    out = tmp_path / "run"
    assert module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(out), "--epochs", "3",
                                               "--max-steps", "6", *TRAIN]) == 0
    capsys.readouterr()
    code = module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(out), "--resume",
                                               str(out / "checkpoint_epoch_1.pt"), *flags, *RESUMED])
    err = capsys.readouterr().err
    assert code == 2 and differs in err and err.count("\n") == 1, err


def test_resume_of_a_finished_run_or_with_overwrite_is_refused(tiny_cache, tiny_model_factory, tmp_path):
    out = tmp_path / "run"
    Trainer(make_config(tiny_cache, out, epochs=1), model_factory=tiny_model_factory).run()
    with pytest.raises(RetailSimInputError, match="already finished its 1 epochs"):
        Trainer(make_config(tiny_cache, out, epochs=1), resume=out / "checkpoint_epoch_1.pt")
    with pytest.raises(RetailSimInputError, match="--resume and --overwrite together"):
        Trainer(make_config(tiny_cache, out, epochs=1, overwrite=True), resume=out / "checkpoint_epoch_1.pt")


def test_resume_against_another_data_set_is_refused(tiny_cache, tiny_model_factory, tmp_path):
    out = tmp_path / "run"
    Trainer(make_config(tiny_cache, out, epochs=3, max_steps=6), model_factory=tiny_model_factory).run()
    other = tmp_path / "other"
    for verb, flags in (("generate", ["--out", other / "raw", "--customers", "40", "--products", "60", "--stores",
                                      "3", "--weeks", "8", "--seed", "4"]),
                        ("prepare-samples", ["--input", other / "raw", "--out", other / "samples"]),
                        ("prepare-tensor-cache", ["--samples", other / "samples", "--out", other / "cache"])):
        assert retailsim_main([verb, *map(str, flags), "--quiet"]) == 0
    with pytest.raises(RetailSimInputError, match="trained on another data set than --data"):
        Trainer(make_config(other / "cache", tmp_path / "again", epochs=3), resume=out / "checkpoint_epoch_1.pt")


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(epoch="two"), "epoch of the checkpoint has the wrong type"),
    (lambda s: s["config"].update(d_model="wide"), "cannot rebuild the model"),
    (lambda s: s.update(config=[1, 2]), "config of the checkpoint has the wrong type"),
], ids=["epoch-type", "config-field-type", "config-type"])
def test_a_checkpoint_of_the_wrong_types_is_one_sentence(tiny_cache, tiny_model_factory, tmp_path, damage,
                                                         message):
    out = tmp_path / "run"
    Trainer(make_config(tiny_cache, out, epochs=3, max_steps=6), model_factory=tiny_model_factory).run()
    state = torch.load(out / "checkpoint_epoch_1.pt", weights_only=True)
    damage(state)
    torch.save(state, out / "damaged.pt")
    with pytest.raises(RetailSimInputError, match=message):
        Trainer(make_config(tiny_cache, out, epochs=3), resume=out / "damaged.pt").run()


def test_a_nan_validation_loss_stops_with_exit_1_and_no_checkpoint(tiny_cache, tmp_path, monkeypatch, capsys):
    original = TrainStep.forward

    def poisoned(self, batch, all_tasks=True):
        total, parts = original(self, batch, all_tasks)
        return (total, parts) if self.training else (total * float("nan"), parts)

    monkeypatch.setattr(TrainStep, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="validation loss of epoch 1 is nan"):
        Trainer(make_config(tiny_cache, tmp_path / "api", epochs=2)).run()
    out = tmp_path / "cli"
    code = module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(out), "--epochs", "2",
                                               *TRAIN])
    assert code == 1 and "validation loss" in capsys.readouterr().err
    assert not list(out.glob("*.pt"))


def test_without_validation_baskets_the_log_says_so(tiny_cache, tiny_model_factory, tmp_path, monkeypatch,
                                                    capsys):
    monkeypatch.setattr(Trainer, "validate", lambda self, epoch: None)
    record = Trainer(make_config(tiny_cache, tmp_path / "run", epochs=1), model_factory=tiny_model_factory).run()
    assert record["val_loss"] is None and record["selected_by"] == "train_loss"
    assert record["best_val_loss"] == record["train_loss"]
    assert (tmp_path / "run" / "best_model.pt").is_file()
    assert module_main("retailsim.train.cli", ["--data", str(tiny_cache), "--out", str(tmp_path / "cli"),
                                               "--epochs", "1", *TRAIN]) == 0
    assert "no validation baskets" in capsys.readouterr().out
