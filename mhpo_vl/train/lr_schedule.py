"""The RL learning rate as a pure function of the optimiser update's index: linear warm-up, then constant
(EasyR1's default) or a cosine decay to `optim.min_lr_ratio * optim.lr` at the run's last update.

The trainer writes `lr_at(...)` into the optimiser's param groups before every update instead of keeping a
torch/DeepSpeed scheduler object: the value depends only on the update's index (step * updates per step + the
update's place in the step), so a resumed run continues the schedule exactly without saving scheduler state, and
the same code drives plain torch and DeepSpeed (whose ZeRO optimisers step with their param groups' "lr").
"""
from __future__ import annotations

import math
from typing import Any

from mhpo_vl.config.schema import LR_SCHEDULES, OptimConfig, TrainerConfig

SCHEDULES = LR_SCHEDULES  # the names config.py checks `optim.lr_schedule` against; lr_at implements each


def updates_per_step(t: TrainerConfig) -> int:
    """Optimiser updates in one RL step: ppo_epochs passes over rollout_batch_size / minibatch_size minibatches."""
    return t.ppo_epochs * (t.rollout_batch_size // t.minibatch_size)


def total_updates(t: TrainerConfig) -> int:
    return t.total_steps * updates_per_step(t)


def lr_at(update_index: int, optim: OptimConfig, total: int) -> float:
    """Learning rate of update `update_index` (0-based) of a run of `total` updates.

    Warm-up: update i < warmup_steps uses lr * (i + 1) / warmup_steps, so the first update already moves and update
    warmup_steps - 1 reaches the full lr. Cosine: from the full lr at the first update after warm-up down to
    min_lr_ratio * lr at update total - 1 (indices past the end stay there)."""
    if update_index < 0:
        raise ValueError(f"update_index must be >= 0, got {update_index}")
    w = optim.warmup_steps
    if update_index < w:
        return optim.lr * (update_index + 1) / w
    if optim.lr_schedule == "constant":
        return optim.lr
    if optim.lr_schedule != "cosine":
        raise ValueError(f"optim.lr_schedule must be one of {', '.join(SCHEDULES)}, got {optim.lr_schedule!r}")
    decay_updates = total - 1 - w  # the cosine runs over updates w .. total-1
    progress = 1.0 if decay_updates <= 0 else min(1.0, (update_index - w) / decay_updates)
    floor = optim.min_lr_ratio * optim.lr
    return floor + (optim.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_optimizer_settings(optimizer: Any, optim: OptimConfig) -> None:
    """Set the configured hyperparameters on every param group. Loading an optimiser's state brings back the
    param groups of the run that saved it (lr included); the config in force now must win."""
    for group in optimizer.param_groups:
        group.update(lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas), eps=optim.eps)
        if "initial_lr" in group:  # a torch LR scheduler's base value
            group["initial_lr"] = optim.lr
