"""The RL learning-rate schedule (mhpo_vl/train/lr_schedule.py) against hand-computed values, its config checks, and a
real short run whose metrics.jsonl logs the scheduled `optim/lr` that the optimiser used."""
import json
import math

import pytest
from run_helpers import small_overrides

from mhpo_vl.config import ConfigError, OptimConfig, TrainerConfig, load_config
from mhpo_vl.train.lr_schedule import lr_at, total_updates, updates_per_step


def test_updates_per_step_counts_epochs_times_minibatches():
    t = TrainerConfig(total_steps=10, rollout_batch_size=32, minibatch_size=8, ppo_epochs=3)
    assert updates_per_step(t) == 12 and total_updates(t) == 120


def test_linear_warmup_then_constant():
    optim = OptimConfig(lr=1e-3, warmup_steps=4, lr_schedule="constant")
    got = [lr_at(i, optim, total=10) for i in range(10)]
    assert got == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3] + [1e-3] * 6, rel=1e-12)
    assert lr_at(0, OptimConfig(lr=1e-3), total=10) == 1e-3  # no warm-up: full lr from the first update


def test_cosine_after_warmup_hits_midpoint_and_floor_at_the_last_update():
    # warm-up 2, then cosine over updates 2..12 (10 intervals): midpoint at update 7, floor at update 12
    optim = OptimConfig(lr=2e-3, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, optim, total=13) == pytest.approx(1e-3)
    assert lr_at(1, optim, total=13) == pytest.approx(2e-3)
    assert lr_at(2, optim, total=13) == pytest.approx(2e-3)
    assert lr_at(7, optim, total=13) == pytest.approx(0.5 * (2e-3 + 2e-4))  # cos(pi/2) = 0: halfway to the floor
    # a quarter of the way: floor + (lr - floor) * (1 + cos(pi/4)) / 2
    assert lr_at(4, optim, total=11) == pytest.approx(2e-4 + 1.8e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(12, optim, total=13) == pytest.approx(2e-4)
    assert lr_at(20, optim, total=13) == pytest.approx(2e-4)  # past the end it stays at the floor
    no_floor = OptimConfig(lr=1.0, lr_schedule="cosine")
    assert [lr_at(i, no_floor, total=3) for i in range(3)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


@pytest.mark.parametrize("override, message", [
    ("optim.lr_schedule=linear", "optim.lr_schedule must be one of constant, cosine, got 'linear'"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ("optim.lr=0", "optim.lr must be > 0"),
])
def test_bad_schedule_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.slow
def test_a_run_logs_and_uses_the_scheduled_lr(tmp_path, tiny_vl_model_dir):
    """3 RL steps x 2 updates (HF rollouts): warm-up over 4 updates, then cosine to 0.1 * lr at update 5. The
    logged optim/lr is each step's last update: updates 1, 3, 5 -> lr/2, lr, lr/10."""
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, out, **{
        "rollout.backend": "hf", "trainer.total_steps": "3", "trainer.val_every": "0", "trainer.save_every": "0",
        "trainer.val_before_train": "false", "optim.lr": "1e-3", "optim.warmup_steps": "4",
        "optim.lr_schedule": "cosine", "optim.min_lr_ratio": "0.1"}))
    trainer = build_trainer(cfg)
    trainer.fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["optim/lr"] for r in rows] == pytest.approx([5e-4, 1e-3, 1e-4], rel=1e-12)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1e-4])  # what the optimiser stepped with
