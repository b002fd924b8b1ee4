"""The three-phase training schedule (SPEC 5) and its per-step learning rate.

Phases are fractions of the epochs, chosen so 20 epochs give SPEC's plan exactly:
  warm-up   epochs 1 .. round(0.15 E)              lr 0.2 x peak, mask 15%, focal loss only
  main      .. round(0.75 E)                        lr peak (``--lr``, 5e-5 by default), mask 15%, all tasks
  fine-tune the rest                                lr 0.2 x peak, mask 20%, all tasks
(round half up; a phase may be empty for very few epochs: 1-2 epochs are all main).
Within each phase the learning rate rises linearly over the first 10% of the phase's optimizer steps (at least
one) and then follows a cosine down to 10% of the phase's peak. ``make_scheduler`` wraps this in a LambdaLR
whose state_dict holds plain numbers only (checkpointable with ``weights_only=True``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from retailsim.data.batching import DEFAULT_MASK_RATE, FINE_TUNE_MASK_RATE

WARMUP_FRACTION, MAIN_END_FRACTION = 0.15, 0.75
SIDE_PHASE_LR_RATIO = 0.2  # 1e-5 / 5e-5
RAMP_FRACTION = 0.10
COSINE_FLOOR = 0.10


@dataclass(frozen=True)
class Phase:
    name: str  # "warmup" | "main" | "finetune"
    first_epoch: int  # 1-based, inclusive
    last_epoch: int  # inclusive; last_epoch < first_epoch for an empty phase
    lr_ratio: float  # of the main-phase peak
    mask_rate: float
    all_tasks: bool

    @property
    def n_epochs(self) -> int:
        return max(0, self.last_epoch - self.first_epoch + 1)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def phases(epochs: int) -> list[Phase]:
    """The three phases of a run of ``epochs`` epochs (some possibly empty)."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}.")
    warm_end = _round_half_up(WARMUP_FRACTION * epochs)
    main_end = max(warm_end + 1, _round_half_up(MAIN_END_FRACTION * epochs)) if epochs > warm_end else warm_end
    main_end = min(main_end, epochs)
    return [
        Phase("warmup", 1, warm_end, SIDE_PHASE_LR_RATIO, DEFAULT_MASK_RATE, False),
        Phase("main", warm_end + 1, main_end, 1.0, DEFAULT_MASK_RATE, True),
        Phase("finetune", main_end + 1, epochs, SIDE_PHASE_LR_RATIO, FINE_TUNE_MASK_RATE, True),
    ]


def phase_of(epoch: int, epochs: int) -> Phase:
    """The phase 1-based ``epoch`` belongs to."""
    for phase in phases(epochs):
        if phase.first_epoch <= epoch <= phase.last_epoch:
            return phase
    raise ValueError(f"epoch {epoch} is outside 1..{epochs}.")


def lr_factor(step: int, epochs: int, steps_per_epoch: int) -> float:
    """Multiplier of the main-phase peak lr at optimizer step ``step`` (0-based) of the whole run."""
    epoch = min(step // steps_per_epoch + 1, epochs)
    phase = phase_of(epoch, epochs)
    phase_steps = phase.n_epochs * steps_per_epoch
    in_phase = step - (phase.first_epoch - 1) * steps_per_epoch
    ramp = max(1, round(RAMP_FRACTION * phase_steps))
    if in_phase < ramp:
        return phase.lr_ratio * (in_phase + 1) / ramp
    progress = min(1.0, (in_phase - ramp) / max(1, phase_steps - ramp - 1))  # the last step reaches the floor
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return phase.lr_ratio * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * cosine)


def make_scheduler(optimizer: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step LambdaLR over the three phases; the optimizer's lr is the main-phase peak."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}.")
    phases(epochs)  # validates
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, epochs, steps_per_epoch))
