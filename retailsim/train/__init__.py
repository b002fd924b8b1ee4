"""Training (SPEC 5): ``WorldModelLoss``, the three-phase schedule, checkpoints and the ``Trainer`` recipe.

Run it as ``python -m retailsim.train`` (flags: ``--help``); the verb logic lives in :mod:`retailsim.train.cli`.
"""
import retailsim.cli  # noqa: F401  (first: it sets the CPU threads' wait policy before torch loads)
from retailsim.train.loss import LossWeights, WorldModelLoss
from retailsim.train.schedule import lr_factor, make_scheduler, phase_of, phases
from retailsim.train.trainer import NonFiniteLossError, TrainConfig, Trainer

__all__ = ["LossWeights", "NonFiniteLossError", "TrainConfig", "Trainer", "WorldModelLoss", "lr_factor",
           "make_scheduler", "phase_of", "phases"]
