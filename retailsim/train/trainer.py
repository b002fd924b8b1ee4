"""The training recipe (SPEC 5): validate the settings, ``setup``, ``train``, ``save_checkpoint``, ``cleanup``.

AdamW (weight decay 0.01 on matrices only: norms, biases and embeddings are not decayed), gradient clipping at
1.0, gradient accumulation, bf16 autocast on CUDA (a no-op elsewhere), the three-phase schedule of
:mod:`retailsim.train.schedule` stepped per optimizer step, validation loss each epoch (evaluation masks),
early stopping, a checkpoint per epoch plus ``best_model.pt`` (:mod:`retailsim.train.checkpoint`), a JSONL
metrics log (``metrics.jsonl``), TensorBoard when importable, DistributedDataParallel under ``torchrun``.

Resume happens at epoch boundaries: a checkpoint is written after each epoch's validation, and resuming from
it restores model, optimizer, scheduler, the early-stopping state and every RNG; the loader's order and masks
depend on (seed, epoch) only, so the next epoch is the one an uninterrupted run would have served, bit for bit
on CPU.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from retailsim.data.atomic_output import check_not_overlapping, output_lock
from retailsim.data.cache_reader import TensorCache
from retailsim.data.loader import make_loader, set_epoch
from retailsim.errors import RetailSimInputError, first_line
from retailsim.train import checkpoint as ckpt
from retailsim.train.loss import COMPONENTS, WorldModelLoss
from retailsim.train.run_folder import check_resume, prepare_run_folder, refuse_earlier_run
from retailsim.train.schedule import make_scheduler, phase_of

PRESET_NAMES = ("tiny", "small", "default")
DEVICES = ("auto", "cpu", "cuda", "mps")


class NonFiniteLossError(RuntimeError):
    """A NaN or Inf loss or gradient norm: the step is not applied and no checkpoint is written."""


@dataclass
class TrainConfig:
    data: Path = Path("data/cache")
    out: Path = Path("checkpoints")
    preset: str = "default"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 5e-5
    weight_decay: float = 0.01
    clip: float = 1.0
    grad_accum: int = 1
    device: str = "auto"
    seed: int = 0
    max_steps: int = 0  # 0 = no cap; else stop after this many optimizer steps (a smoke run)
    num_workers: int = 0
    patience: int = 5  # epochs without a better validation loss before stopping; 0 = never stop early
    val_batches: int = 0  # validation batches per epoch (per process), the first in split order; 0 = the whole split
    log_every: int = 50
    gradient_checkpointing: bool = False
    promotions: bool = False  # the model reads the cache's promotion plan (--promotions)
    progress: bool = True
    overwrite: bool = False  # replace an earlier run's files in ``out`` (else a non-empty ``out`` needs a resume)

    def validate(self) -> "TrainConfig":
        self.data, self.out = Path(self.data), Path(self.out)
        TensorCache.open(self.data, "--data")  # a missing or damaged cache is one sentence, before any work
        check_not_overlapping(self.out, [("--data", self.data)], may_contain=True)
        if self.out.exists() and not self.out.is_dir():
            raise RetailSimInputError(f"--out {self.out} is an existing file; expected a folder for the run.")
        if self.preset not in PRESET_NAMES:
            raise RetailSimInputError(f"--preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}.")
        if self.device not in DEVICES:
            raise RetailSimInputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}.")
        positive = {"epochs": self.epochs, "batch-size": self.batch_size, "grad-accum": self.grad_accum,
                    "log-every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise RetailSimInputError(f"--{name} must be at least 1, got {value}.")
        for name, value in {"max-steps": self.max_steps, "num-workers": self.num_workers,
                            "patience": self.patience, "seed": self.seed, "val-batches": self.val_batches}.items():
            if value < 0:
                raise RetailSimInputError(f"--{name} must be 0 or more, got {value}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RetailSimInputError(f"--lr must be a positive number, got {self.lr}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RetailSimInputError("--device cuda: no CUDA device is available.")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise RetailSimInputError("--device mps: Apple MPS is not available.")
        return self


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


def build_world_model(preset: str, data: Path, gradient_checkpointing: bool, config: dict | None = None,
                      **overrides) -> nn.Module:
    """The WorldModel of ``preset`` sized for the cache in ``data`` with config fields ``overrides`` (or rebuilt
    from a checkpoint's config, which already holds them)."""
    from retailsim.model import (WorldModel, WorldModelConfig, data_sizes_from_cache, product_category_from_cache,
                                 product_counts_from_cache)

    if config is not None:
        model_config = WorldModelConfig.from_dict({**config, "gradient_checkpointing": gradient_checkpointing})
    else:
        model_config = WorldModelConfig.from_name(preset, gradient_checkpointing=gradient_checkpointing,
                                                  **{**data_sizes_from_cache(data), **overrides})
    model = WorldModel(model_config, product_category=product_category_from_cache(data))
    if config is None:  # a fresh model; a checkpoint's weights would replace the bias anyway
        model.init_output_bias(product_counts_from_cache(data))
    return model


class TrainStep(nn.Module):
    """Model forward and loss in one module, so DistributedDataParallel sees every parameter the loss uses
    (the output projection and product vectors are read by the loss, outside the model's forward)."""

    def __init__(self, model: nn.Module, loss: WorldModelLoss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch, all_tasks: bool = True):
        output = self.model(batch)
        return self.loss(self.model, batch, output, all_tasks=all_tasks)


def wrap_distributed(step: TrainStep, device: torch.device) -> nn.Module:
    """DDP over the train step; unused parameters (aux heads in the focal-only warm-up) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=True)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices of Linear/conv layers; no decay on norms, biases, embeddings and 1-d parameters."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.RMSNorm)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, rest = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (rest if parameter.ndim < 2 or id(parameter) in no_decay else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class Trainer:
    """``Trainer(config).run()``; ``model_factory(preset, data, gradient_checkpointing, config_dict)`` builds
    the model (tests may pass another one honouring the WorldModelOutput contract)."""

    def __init__(self, config: TrainConfig, resume: Path | None = None, model_factory=build_world_model,
                 resume_state: dict | None = None) -> None:
        self.config = config.validate()
        self.resume = Path(resume) if resume is not None else None
        self.model_factory = model_factory
        self.resume_state = resume_state
        if self.resume is not None and resume_state is None:
            self.resume_state = ckpt.load_checkpoint(self.resume)
        self.world_size_requested = int(os.environ.get("WORLD_SIZE", "1"))
        if int(os.environ.get("RANK", "0")) == 0:
            with output_lock(self.config.out):  # another trainer on this --out is refused before any work
                pass
        if self.resume_state is not None:
            check_resume(self.resume, self.resume_state, self.config, self.world_size_requested)
        elif not self.config.overwrite:
            refuse_earlier_run(self.config.out)
        self.writer = None
        self.metrics_file = None
        self._claim = contextlib.ExitStack()

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        cfg = self.config
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world_size > 1
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, local_rank)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.is_main = self.rank == 0
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        state = self.resume_state
        try:
            overrides = {"promotions": True} if cfg.promotions and state is None else {}
            self.model = self.model_factory(cfg.preset, cfg.data, cfg.gradient_checkpointing,
                                            None if state is None else state["config"], **overrides).to(self.device)
            if state is not None:
                self.model.load_state_dict(state["model_state_dict"])
        except (TypeError, ValueError, RuntimeError, AttributeError) as error:
            if state is None:
                raise
            raise RetailSimInputError(f"--resume {self.resume}: its config and weights cannot rebuild the model "
                                      f"({first_line(error)}).") from None
        self.step_module = TrainStep(self.model, WorldModelLoss())
        self.train_module = wrap_distributed(self.step_module, self.device) if self.distributed else self.step_module
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           fused=self.device.type == "cuda")
        self._loaders: dict = {}
        n_batches = len(self.train_loader(phase_of(1, cfg.epochs).mask_rate))
        if n_batches == 0:
            raise RetailSimInputError(f"--data {cfg.data}: the train split has fewer baskets than ranks x batches.")
        self.steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
        self.scheduler = make_scheduler(self.optimizer, cfg.epochs, self.steps_per_epoch)
        self.start_epoch, self.global_step, self.best_val_loss, self.epochs_since_best = 1, 0, math.inf, 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
            self.scheduler.load_state_dict(state["scheduler_state_dict"])
            self.start_epoch = int(state["epoch"]) + 1
            self.global_step = int(state["global_step"])
            self.best_val_loss = float(state["best_val_loss"])
            self.epochs_since_best = int(state.get("epochs_since_best", 0))
        if self.is_main:
            self.claim_output(state)
            self.metrics_file = open(cfg.out / "metrics.jsonl", "a" if state is not None else "w")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(cfg.out / "tensorboard"))
            except ImportError:
                self.writer = None
        if state is not None:  # last: everything above may draw random numbers
            ckpt.restore_rng_state(state["rng_state"])

    def claim_output(self, state: dict | None) -> None:
        """Lock ``out`` for this run (a second trainer on it is refused), then prepare it (run_folder.py)."""
        self._claim.enter_context(output_lock(self.config.out))
        prepare_run_folder(self.config.out, state, self.config.overwrite)

    def train_loader(self, mask_rate: float):
        if ("train", mask_rate) not in self._loaders:
            self._loaders[("train", mask_rate)] = make_loader(
                self.config.data, "train", batch_size=self.config.batch_size, train=True, seed=self.config.seed,
                mask_rate=mask_rate, num_workers=self.config.num_workers, device=self.device,
                num_replicas=self.world_size, rank=self.rank, max_history=self.model.config.max_history,
                max_promotions=self.model.config.max_promotions, read_plan=self.model.config.promotions)
        return self._loaders[("train", mask_rate)]

    def validation_loader(self):
        """The validation batches: length-bucketed over the whole split; with ``val_batches`` in split order
        (bucketing sorts by history length, so its first batches would be the shortest histories)."""
        if "validation" not in self._loaders:
            self._loaders["validation"] = make_loader(
                self.config.data, "validation", batch_size=self.config.batch_size, train=False, seed=self.config.seed,
                bucket=self.config.val_batches == 0, num_workers=self.config.num_workers, device=self.device,
                num_replicas=self.world_size, rank=self.rank, max_history=self.model.config.max_history,
                max_promotions=self.model.config.max_promotions, read_plan=self.model.config.promotions)
        return self._loaders["validation"]

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name not in ("epoch", "global_step"):
                    self.writer.add_scalar(f"{record['kind']}/{name}", value, record["global_step"])

    # ------------------------------------------------------------------------------------------ training
    def run(self) -> dict:
        """setup, train, cleanup; returns the last epoch record."""
        self.setup()
        try:
            return self.train()
        finally:
            self.cleanup()

    def train(self) -> dict:
        cfg, record = self.config, {}
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            phase = phase_of(epoch, cfg.epochs)
            record = self.train_epoch(epoch, phase)
            val_loss = self.validate(epoch)
            record["val_loss"] = val_loss
            if val_loss is None:  # no validation batch (empty split, or many ranks): judge by training
                record["selected_by"] = "train_loss"
                val_loss = record["train_loss"]
            elif not math.isfinite(val_loss):
                raise NonFiniteLossError(
                    f"the validation loss of epoch {epoch} is {val_loss}; no checkpoint was written for this epoch "
                    f"and the last one in {cfg.out} is intact (a new run with a lower --lr may help).")
            improved = val_loss < self.best_val_loss
            if improved:
                self.best_val_loss, self.epochs_since_best = val_loss, 0
            else:
                self.epochs_since_best += 1
            record.update(best_val_loss=self.best_val_loss, kind="epoch")
            self.log(record)
            self.save_checkpoint(epoch, improved)
            if cfg.patience and self.epochs_since_best >= cfg.patience:
                if self.is_main:
                    print(f"early stopping after epoch {epoch}: no better validation loss in {cfg.patience} epochs")
                break
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        return record

    def train_epoch(self, epoch: int, phase) -> dict:
        cfg = self.config
        loader = self.train_loader(phase.mask_rate)
        set_epoch(loader, epoch)
        self.train_module.train()
        n_batches = len(loader)
        groups = [min(cfg.grad_accum, n_batches - start) for start in range(0, n_batches, cfg.grad_accum)]
        bar = None
        if self.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.epochs} {phase.name}", unit="batch", leave=False)
        started, samples, window_start, window_samples = time.perf_counter(), 0, time.perf_counter(), 0
        epoch_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        component_sums = {name: torch.zeros((), dtype=torch.float64, device=self.device) for name in COMPONENTS}
        micro, group_index, step_loss = 0, 0, torch.zeros((), device=self.device)
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            group = groups[group_index]
            last_micro = micro == group - 1
            sync = contextlib.nullcontext() if (last_micro or not self.distributed) else self.train_module.no_sync()
            with sync:
                with self.autocast():
                    total, components = self.train_module(batch, all_tasks=phase.all_tasks)
                (total / group).backward()
            step_loss = step_loss + total.detach() / group
            for name, value in components.items():
                component_sums[name] += value.double() / group
            batch_samples = len(batch) * self.world_size
            samples += batch_samples
            window_samples += batch_samples
            micro += 1
            if bar is not None:
                bar.update(1)
            if not last_micro:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
            if not bool(torch.isfinite(step_loss) & torch.isfinite(grad_norm)):  # one host sync per step
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"non-finite loss ({float(step_loss)}) or gradient norm ({float(grad_norm)}) at epoch {epoch}, "
                    f"optimizer step {self.global_step + 1}; the step was not applied and the last checkpoint in "
                    f"{cfg.out} is intact (a new run with a lower --lr may help).")
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            epoch_loss_sum += step_loss.double()
            if self.global_step % cfg.log_every == 0:
                now = time.perf_counter()
                rate = window_samples / max(now - window_start, 1e-9)
                loss_value = self.reduced(step_loss)
                self.log({"kind": "step", "epoch": epoch, "global_step": self.global_step, "phase": phase.name,
                          "lr": self.scheduler.get_last_lr()[0], "loss": loss_value,
                          **{name: float(value) for name, value in components.items()},
                          "grad_norm": float(grad_norm), "samples_per_s": rate})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:,.0f}")
                window_start, window_samples = now, 0
            step_loss = torch.zeros((), device=self.device)
            micro, group_index = 0, group_index + 1
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        if bar is not None:
            bar.close()
        steps = max(group_index, 1)
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "global_step": self.global_step, "phase": phase.name,
                "lr": self.scheduler.get_last_lr()[0], "train_loss": self.reduced(epoch_loss_sum / steps),
                **{f"train_{name}": self.reduced(component_sums[name] / steps)
                   for name in COMPONENTS if name == "focal" or phase.all_tasks},
                "samples_per_s": samples / max(seconds, 1e-9), "seconds": seconds}

    def reduced(self, value: torch.Tensor) -> float:
        """The mean of ``value`` over ranks, as a float."""
        if self.distributed:
            value = value.detach().clone().double()
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)

    @torch.no_grad()
    def validate(self, epoch: int) -> float | None:
        """Mean all-task loss over the validation split (evaluation masks; its first ``val_batches`` batches
        when set), weighted by samples; None when this rank count leaves no validation batch (then
        best_model.pt follows the training loss)."""
        self.step_module.eval()
        loader = self.validation_loader()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in itertools.islice(loader, self.config.val_batches or None):
            batch = batch.to(self.device, non_blocking=True)
            with self.autocast():
                loss, _ = self.step_module(batch, all_tasks=True)
            total[0] += loss.double() * len(batch)
            total[1] += len(batch)
        if self.distributed:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    # ------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "best_val_loss": float(self.best_val_loss),
            "config": ckpt.plain(self.model.config),
            "rng_state": ckpt.capture_rng_state(),
            "train_config": {**ckpt.plain(asdict(self.config)), "world_size": self.world_size,
                             "data_fingerprint": TensorCache.open(self.config.data).fingerprint()},
            "epochs_since_best": self.epochs_since_best,
        }

    def save_checkpoint(self, epoch: int, is_best: bool) -> None:
        if self.is_main:
            state = self.checkpoint_state(epoch)
            ckpt.save_atomic(state, self.config.out / ckpt.epoch_name(epoch))
            if is_best:
                ckpt.save_atomic(state, self.config.out / ckpt.BEST_NAME)
        if self.distributed:
            dist.barrier()

    def cleanup(self) -> None:
        self._claim.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

