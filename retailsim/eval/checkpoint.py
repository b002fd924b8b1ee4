"""Loading a trained checkpoint for evaluation: the model rebuilt from its saved config and checked against the
cache it is evaluated on (a mismatch is one clear sentence, exit 2)."""
from __future__ import annotations

from pathlib import Path

import torch

from retailsim.errors import RetailSimInputError, first_line


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RetailSimInputError("--device cuda: no CUDA device is available.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise RetailSimInputError("--device mps: Apple MPS is not available.")
    return torch.device(name)


def load_model(path: Path, cache_dir: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``WorldModel(WorldModelConfig(**ckpt["config"]))`` with the checkpoint's weights, in eval mode on ``device``."""
    from retailsim.model import WorldModel, WorldModelConfig, data_sizes_from_cache

    path = Path(path)
    if not path.is_file():
        raise RetailSimInputError(f"checkpoint {path}: no such file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise RetailSimInputError(f"checkpoint {path} is not a readable RetailSim checkpoint "
                                  f"({first_line(error)}).") from None
    if (not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict)
            or not isinstance(checkpoint.get("model_state_dict"), dict)):
        raise RetailSimInputError(f"checkpoint {path} is not a RetailSim training checkpoint (no config or "
                                  f"model_state_dict).")
    try:
        config = WorldModelConfig.from_dict(dict(checkpoint["config"]))
    except (TypeError, ValueError) as error:
        raise RetailSimInputError(f"checkpoint {path}: its config cannot build a WorldModel "
                                  f"({first_line(error)}).") from None
    expected = data_sizes_from_cache(cache_dir)
    wrong = [f"{name} {getattr(config, name)} vs {value}" for name, value in expected.items()
             if getattr(config, name) != value]
    if wrong:
        raise RetailSimInputError(f"checkpoint {path} was trained on another data set than --data {cache_dir} "
                                  f"(checkpoint vs cache: {'; '.join(wrong)}).")
    broken = [name for name, value in checkpoint["model_state_dict"].items()
              if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if broken:
        raise RetailSimInputError(f"checkpoint {path} holds NaN or Inf weights ({len(broken)} tensors, first "
                                  f"{broken[0]}); it cannot be evaluated (weights damaged, or training diverged).")
    try:
        model = WorldModel(config)
    except (TypeError, ValueError) as error:  # a config of the right names but wrong types
        raise RetailSimInputError(f"checkpoint {path}: its config cannot build a WorldModel "
                                  f"({first_line(error)}).") from None
    try:
        model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise RetailSimInputError(f"checkpoint {path}: its weights do not match its config ({detail}; a checkpoint "
                                  f"from another version of RetailSim?).") from None
    return model.to(device).eval()
