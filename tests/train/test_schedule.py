"""The three-phase schedule (SPEC 5): boundaries, mask rates, tasks, and the per-step learning rate."""
from __future__ import annotations

import io
import math

import pytest
import torch

from retailsim.train.schedule import COSINE_FLOOR, lr_factor, make_scheduler, phase_of, phases


def spans(epochs):
    return [(p.name, p.first_epoch, p.last_epoch) for p in phases(epochs)]


def test_twenty_epochs_are_spec_plan():
    assert spans(20) == [("warmup", 1, 3), ("main", 4, 15), ("finetune", 16, 20)]
    warmup, main, finetune = phases(20)
    assert (warmup.mask_rate, main.mask_rate, finetune.mask_rate) == (0.15, 0.15, 0.20)
    assert (warmup.all_tasks, main.all_tasks, finetune.all_tasks) == (False, True, True)
    assert 5e-5 * warmup.lr_ratio == pytest.approx(1e-5) and 5e-5 * finetune.lr_ratio == pytest.approx(1e-5)
    assert main.lr_ratio == 1.0


@pytest.mark.parametrize("epochs, expected", [
    (1, [("warmup", 1, 0), ("main", 1, 1), ("finetune", 2, 1)]),
    (3, [("warmup", 1, 0), ("main", 1, 2), ("finetune", 3, 3)]),
    (10, [("warmup", 1, 2), ("main", 3, 8), ("finetune", 9, 10)]),
    (40, [("warmup", 1, 6), ("main", 7, 30), ("finetune", 31, 40)]),
], ids=["1-epoch", "3-epochs", "10-epochs", "40-epochs"])
def test_phases_scale_with_the_epochs(epochs, expected):
    assert spans(epochs) == expected
    covered = [e for p in phases(epochs) for e in range(p.first_epoch, p.last_epoch + 1)]
    assert covered == list(range(1, epochs + 1))
    assert [phase_of(e, epochs).name for e in (1, epochs)][-1] == expected[-1][0] if epochs > 1 else True


def test_lr_ramps_then_follows_a_cosine_within_each_phase():
    epochs, steps = 20, 10  # warm-up 30 steps (ramp 3), main 120 steps (ramp 12), fine-tune 50 (ramp 5)
    assert lr_factor(0, epochs, steps) == pytest.approx(0.2 / 3)
    assert lr_factor(2, epochs, steps) == pytest.approx(0.2)
    assert lr_factor(16, epochs, steps) == pytest.approx(0.2 * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 *
                                                               (1 + math.cos(math.pi * 13 / 26))))
    assert lr_factor(29, epochs, steps) == pytest.approx(0.2 * COSINE_FLOOR)
    assert lr_factor(30, epochs, steps) == pytest.approx(1 / 12)  # main phase starts its own ramp
    assert lr_factor(41, epochs, steps) == pytest.approx(1.0)  # peak = --lr
    main = [lr_factor(s, epochs, steps) for s in range(41, 150)]
    assert all(a >= b for a, b in zip(main, main[1:]))  # cosine decay, monotone
    assert lr_factor(150, epochs, steps) == pytest.approx(0.2 / 5)
    assert lr_factor(199, epochs, steps) == pytest.approx(0.2 * COSINE_FLOOR)


def test_scheduler_sets_the_optimizer_lr_and_its_state_loads_weights_only():
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=5e-5)
    scheduler = make_scheduler(optimizer, epochs=20, steps_per_epoch=10)
    seen = []
    for _ in range(45):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([5e-5 * lr_factor(s, 20, 10) for s in range(45)])
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh_optimizer = torch.optim.AdamW([parameter], lr=5e-5)
    fresh = make_scheduler(fresh_optimizer, epochs=20, steps_per_epoch=10)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh.load_state_dict(state)
    optimizer.step(), scheduler.step(), fresh_optimizer.step(), fresh.step()
    assert fresh.get_last_lr() == scheduler.get_last_lr() == [5e-5 * lr_factor(46, 20, 10)]


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        phases(0)
    with pytest.raises(ValueError):
        make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 20, 0)
