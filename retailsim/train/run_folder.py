"""The folder a training run writes (``--out``): one run per folder, and a resume that continues that run.

``--out`` holds ``checkpoint_epoch_N.pt``, ``best_model.pt``, ``metrics.jsonl`` and ``tensorboard/`` of ONE run.
A fresh run refuses a folder holding another run unless ``--overwrite`` (which removes that run's files, and
nothing else). ``--resume`` continues the run whose checkpoint it names: same settings, same data, epochs left,
the latest checkpoint of its folder (an earlier one would leave later checkpoints and a later best_model.pt of
an abandoned future beside the new ones), into that same folder or an empty one; the metrics log keeps each
record once.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from retailsim.data.cache_reader import TensorCache
from retailsim.errors import RetailSimInputError

# Settings a resumed run must share with the checkpoint's run: they fix the schedule, the batches, the masks and
# what "a better validation loss" compares; the others (max_steps, patience, workers, logging, out) may change.
RESUME_SETTINGS = ("preset", "epochs", "batch_size", "lr", "weight_decay", "clip", "grad_accum", "seed", "val_batches",
                   "promotions")
RUN_FILES = ("metrics.jsonl", "best_model.pt", "tensorboard")  # plus checkpoint_epoch_*.pt; what --overwrite removes


def prepare_run_folder(out: Path, state: dict | None, overwrite: bool) -> None:
    """Called with the claim on ``out`` held: clear an earlier run under ``overwrite`` (refuse one without it),
    or, resuming, keep the metrics log up to the checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        if not overwrite:
            refuse_earlier_run(out)  # again, now that the claim is held
        for path in earlier_run_files(out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    log = out / "metrics.jsonl"
    if log.is_file():
        kept = [line for line in log.read_text().splitlines()
                if line.strip() and record_before(line, int(state["epoch"]), int(state["global_step"]))]
        temporary = log.with_name(f".{log.name}.tmp-{os.getpid()}")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, log)


def earlier_run_files(out: Path) -> list[Path]:
    """The files of an earlier training run in ``out`` (what ``--overwrite`` removes)."""
    if not out.is_dir():
        return []
    named = [out / name for name in RUN_FILES if (out / name).exists()]
    return named + sorted(out.glob("checkpoint_epoch_*.pt")) + sorted(out.glob(".*.tmp-*"))


def refuse_earlier_run(out: Path) -> None:
    earlier = earlier_run_files(out)
    if earlier:
        raise RetailSimInputError(
            f"--out {out} holds an earlier run ({', '.join(p.name for p in earlier[:3])}); pass --resume "
            f"{out}/checkpoint_epoch_N.pt to continue it, --overwrite to replace it, or choose another folder.")


def record_before(line: str, epoch: int, global_step: int) -> bool:
    """Whether a metrics.jsonl line was logged before the checkpoint (epoch, global_step) was written."""
    try:
        record = json.loads(line)
    except ValueError:
        return False  # a line cut by a kill
    if record.get("kind") == "epoch":
        return int(record.get("epoch", 0)) <= epoch
    return int(record.get("global_step", 0)) <= global_step


def check_resume(path: Path, state: dict, config, world_size: int) -> None:
    """A resumed run continues the checkpoint's run (``config``: the TrainConfig asked for): same settings and
    process count, same data, epochs left to train, its latest checkpoint, into its own folder or an empty one."""
    saved = state.get("train_config") or {}
    differ = [f"{name} {saved[name]!r} -> {getattr(config, name)!r}" for name in RESUME_SETTINGS
              if name in saved and saved[name] != getattr(config, name)]
    if saved.get("world_size", world_size) != world_size:
        differ.append(f"processes {saved['world_size']} -> {world_size}")
    if differ:
        raise RetailSimInputError(
            f"--resume {path} continues a run with other settings ({'; '.join(differ)}); resume with the "
            f"checkpoint's settings (train takes them from the checkpoint when they are not given) or start a new run.")
    if config.overwrite:
        raise RetailSimInputError("--resume and --overwrite together would delete the run being continued; "
                                  "choose one.")
    if int(state["epoch"]) >= config.epochs:
        raise RetailSimInputError(f"--resume {path}: that run already finished its {config.epochs} epochs; nothing "
                                  f"is left to train (start a new run to train longer).")
    out = Path(config.out)
    if Path(path).resolve().parent != out.resolve():
        refuse_earlier_run(out)  # continuing run A must not write into the folder of run B
    later = [p.name for p in earlier_run_files(out) if p.name.startswith("checkpoint_epoch_")
             and p.stem.rsplit("_", 1)[-1].isdigit() and int(p.stem.rsplit("_", 1)[-1]) > int(state["epoch"])]
    if later:
        raise RetailSimInputError(f"--resume {path} is epoch {state['epoch']}, but --out {out} holds later "
                                  f"checkpoints ({', '.join(sorted(later)[:3])}); resume from the latest, or copy "
                                  f"this checkpoint into a new --out to branch from it.")
    from retailsim.model import data_sizes_from_cache

    sizes = data_sizes_from_cache(config.data)
    model_config = state.get("config") or {}
    wrong = [f"{name} {model_config.get(name)} vs {value}" for name, value in sizes.items()
             if model_config.get(name) != value]
    fingerprint = TensorCache.open(config.data).fingerprint()
    if saved.get("data_fingerprint") not in (None, fingerprint):
        wrong.append("another input fingerprint")
    if wrong:
        raise RetailSimInputError(f"--resume {path} was trained on another data set than --data {config.data} "
                                  f"(checkpoint vs cache: {'; '.join(wrong)}).")
