"""Checkpoints (SPEC 5): written atomically, loadable with ``torch.load(path, weights_only=True)``.

Keys: ``epoch`` (completed epochs, 1-based), ``global_step`` (optimizer steps), ``model_state_dict``,
``optimizer_state_dict``, ``scheduler_state_dict``, ``best_val_loss``, ``config`` (the model's config as a
plain dict: ``WorldModelConfig(**config)`` rebuilds the model), ``rng_state`` (torch, CUDA, NumPy and Python
generators as tensors and plain numbers), plus ``train_config`` (the trainer's settings, plain) and
``epochs_since_best`` (the early-stopping counter), which resume needs.
"""
from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch

from retailsim.errors import RetailSimInputError, first_line

REQUIRED_KEYS = ("epoch", "global_step", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                 "best_val_loss", "config", "rng_state")
BEST_NAME = "best_model.pt"


def epoch_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pt"


def plain(value):
    """A config value as plain Python (dataclasses -> dicts, tuples -> lists, paths -> str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def capture_rng_state() -> dict:
    """Every generator training draws from, as tensors and plain numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["state"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(checkpoint: dict, path: Path) -> None:
    """Writes ``checkpoint`` to ``path`` through a temporary file in the same folder and ``os.replace``: a
    crash leaves either the old file or the new one, never a partial one."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    assert not missing, f"checkpoint lacks {missing}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint written by the trainer, loaded with ``weights_only=True``; a user error names the file."""
    path = Path(path)
    if not path.is_file():
        raise RetailSimInputError(f"--resume {path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise RetailSimInputError(f"--resume {path}: not a readable RetailSim checkpoint ({first_line(error)}).") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise RetailSimInputError(f"--resume {path}: not a RetailSim training checkpoint (expected the keys "
                                  f"{', '.join(REQUIRED_KEYS)}).")
    kinds = {"epoch": int, "global_step": int, "best_val_loss": (int, float), "config": dict,
             "model_state_dict": dict, "optimizer_state_dict": dict, "scheduler_state_dict": dict, "rng_state": dict}
    wrong = [key for key, kind in kinds.items() if not isinstance(checkpoint[key], kind)]
    if not isinstance(checkpoint.get("train_config", {}), dict):
        wrong.append("train_config")
    if wrong:
        raise RetailSimInputError(f"--resume {path}: {', '.join(wrong)} of the checkpoint has the wrong type; it "
                                  f"was not written by this trainer.")
    return checkpoint
