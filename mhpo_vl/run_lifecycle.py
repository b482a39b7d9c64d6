"""A training run around the steps of a `Trainer`: warm-start and first validation, the step loop with its
validations and checkpoints, the state a checkpoint saves and a resume restores, the summary, closing down."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mhpo_vl import console
from mhpo_vl.atomic_io import write_durably
from mhpo_vl.checkpoint import CheckpointManager, rng_state, set_rng_state
from mhpo_vl.machine import machine_info
from mhpo_vl.run_dir import apply_optimizer_settings

if TYPE_CHECKING:
    from mhpo_vl.trainer import Trainer


def fit(trainer: Trainer) -> dict[str, Any]:
    t = trainer.cfg.trainer
    trainer.fit_started = time.perf_counter()
    if trainer.resumed_from is None:
        _before_rl(trainer)
    bar = console.progress(total=t.total_steps, initial=trainer.step_idx, desc="RL", unit="step")
    try:
        while trainer.step_idx < t.total_steps:
            metrics = trainer.step()
            last_val = None  # a checkpoint is credited only with a validation of its own step
            if t.val_every > 0 and (trainer.step_idx % t.val_every == 0 or trainer.step_idx == t.total_steps):
                val = trainer.validate()
                metrics.update(val)
                last_val = log_validation(trainer, val, write=False)
            trainer.writer.write(trainer.step_idx, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['reward/accuracy']:.3f}",
                            val=f"{trainer.val_history[-1]['accuracy']:.3f}" if trainer.val_history else "-",
                            tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
            if t.save_every > 0 and (trainer.step_idx % t.save_every == 0 or trainer.step_idx == t.total_steps):
                save_checkpoint(trainer, last_val)
    finally:
        bar.close()
    result = summary(trainer, wall_seconds(trainer))
    if trainer.rt.is_main:
        write_durably(trainer.out / "summary.json", json.dumps(result, indent=1))
    trainer.close()
    return result


def _before_rl(trainer: Trainer) -> None:
    """A fresh run: the optional supervised warm-start (validated before it) and the validation RL starts from."""
    if trainer.cfg.warmstart.steps > 0:
        before = trainer.validate()
        trainer.summary_extra["val_accuracy_before_warmstart"] = before["val/accuracy"]
        log_validation(trainer, before, tag="before_warmstart")
        from mhpo_vl.warmstart import run_warmstart

        ws = run_warmstart(trainer, trainer.cfg.warmstart)
        trainer.summary_extra.update(ws)
        console.line(f"warm-start done: {ws['warmstart_steps']} steps in {ws['warmstart_seconds']:.0f} s, "
                     f"final loss {ws['warmstart_final_loss']:.3f}")
        trainer.sync_weights()
    if trainer.cfg.trainer.val_before_train:
        log_validation(trainer, trainer.validate())


def wall_seconds(trainer: Trainer) -> float:
    """Time in fit() over the whole run: the earlier segments (up to the checkpoint this one resumed from) plus this
    one. Time a killed segment spent after its last checkpoint is not counted: it was redone."""
    now = time.perf_counter() - trainer.fit_started if trainer.fit_started is not None else 0.0
    return trainer.wall_seconds_before + now


def log_validation(trainer: Trainer, val: dict[str, float], *, tag: str | None = None, write: bool = True) -> float:
    record = {"step": trainer.step_idx, "accuracy": val["val/accuracy"], **({"tag": tag} if tag else {})}
    if tag is None:
        trainer.val_history.append(record)
    if write and trainer.rt.is_main:
        trainer.writer.write(trainer.step_idx, {**val, **({"val/tag": tag} if tag else {})})
    when = tag.replace("_", " ").replace("warmstart", "warm-start") if tag else f"at step {trainer.step_idx}"
    console.line(f"validation {when}: accuracy {val['val/accuracy']:.3f}, format {val['val/format_rate']:.3f} "
                 f"(Avg@{trainer.cfg.rollout.val_n} over {val['val/num_answers']:.0f} answers)")
    return val["val/accuracy"]


def summary(trainer: Trainer, seconds: float) -> dict[str, Any]:
    accs = [v["accuracy"] for v in trainer.val_history]
    return {
        "val_accuracy_initial": accs[0] if accs else None,
        "val_accuracy_final": accs[-1] if accs else None,
        "val_accuracy_best": max(accs) if accs else None,
        "steps": trainer.step_idx, "wall_seconds": seconds, "loss": trainer.cfg.algorithm.loss,
        "nonfinite_updates": trainer.nonfinite.total, "resumed_from": trainer.resumed_from,
        "val_history": trainer.val_history, "machine": machine_info(), **trainer.summary_extra,
    }


# ------------------------------------------------------------------------------------------- checkpoints ---
def save_checkpoint(trainer: Trainer, val_accuracy: float | None) -> None:
    rt = trainer.rt
    state = {
        "step": trainer.step_idx, "order": trainer.order.state_dict(), "rng": rng_state(),
        "optimizer": rt.optimizer_state(), "val_history": trainer.val_history,
        "nonfinite_total": trainer.nonfinite.total, "nonfinite_in_a_row": trainer.nonfinite.in_a_row,
        "summary_extra": trainer.summary_extra, "wall_seconds": wall_seconds(trainer),
    }
    full = None  # save_pretrained reads the module itself, whose parameters are whole except under ZeRO-3
    if rt.zero_stage == 3:  # partitioned: every rank takes part in gathering them
        weights = rt.iter_full_weights()
        if rt.is_main:
            full = {name: tensor.to("cpu") for name, tensor in weights}
        else:
            for _ in weights:
                pass

    def save_model(folder: Path) -> None:
        rt.unwrapped().save_pretrained(folder, state_dict=full, safe_serialization=True)
        trainer.policy.processor.save_pretrained(folder)

    saved = trainer.ckpt.save(trainer.step_idx, save_model=save_model, trainer_state=state,
                              val_accuracy=val_accuracy,
                              save_shards=rt.save_deepspeed_state if rt.uses_deepspeed else None,
                              is_main=rt.is_main, barrier=rt.barrier, all_agree=rt.all_agree)
    console.line(f"saved checkpoint {saved.name}")


def restore(trainer: Trainer, checkpoint: Path) -> None:
    state = CheckpointManager.load_trainer_state(checkpoint)
    trainer.step_idx = state["step"]
    trainer.order.load_state_dict(state["order"])
    set_rng_state(state["rng"])
    trainer.rt.load_optimizer_state(state["optimizer"])
    trainer.rt.load_deepspeed_state(str(checkpoint))
    apply_optimizer_settings(trainer.optimizer, trainer.cfg.optim)  # the config in force, not the saved groups'
    trainer.val_history = state["val_history"]
    trainer.nonfinite.total = state["nonfinite_total"]
    trainer.nonfinite.in_a_row = state["nonfinite_in_a_row"]
    trainer.summary_extra = state.get("summary_extra", {})
    trainer.wall_seconds_before = state.get("wall_seconds", 0.0)
    trainer.resumed_from = str(checkpoint)
    trainer.writer.truncate_after(trainer.step_idx)
