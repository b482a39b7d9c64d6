"""Saving a training checkpoint and restoring from one: the weights (a Hugging Face folder that transformers and vLLM
load), the processor, the optimiser (DeepSpeed's shards under ZeRO), and the trainer's `TrainState`.

The files, their verification and the atomic rename are mhpo_vl.runs.checkpoints.CheckpointManager; this module
decides what goes in: `state.state_dict()` plus the optimiser's state, nothing read off the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mhpo_vl.config import OptimConfig
from mhpo_vl.models.lora import has_lora, save_adapter
from mhpo_vl.runs import console
from mhpo_vl.runs.checkpoints import CheckpointManager
from mhpo_vl.train.interfaces import Optimizer, Runtime, SavesPretrained
from mhpo_vl.train.lr_schedule import apply_optimizer_settings
from mhpo_vl.train.state import TrainState


def save(ckpt: CheckpointManager, state: TrainState, rt: Runtime, processor: Any, val_accuracy: float | None) -> None:
    """A checkpoint of this step on every rank (each takes part in gathering ZeRO-3 weights and writing its shards);
    `val_accuracy`: the validation of this very step, if one ran (the best checkpoint is chosen by it)."""
    trainer_state = {**state.state_dict(), "optimizer": rt.optimizer_state()}
    full = None  # save_pretrained reads the module itself, whose parameters are whole except under ZeRO-3
    adapter = None  # LoRA: the adapter only (mhpo_vl.models.lora); the base weights are the run's model
    if has_lora(rt.unwrapped()):  # every rank runs through the weights (ZeRO-3 gathers each)
        trainable = {n for n, p in rt.unwrapped().named_parameters() if p.requires_grad}
        adapter = {name: tensor.to("cpu") for name, tensor in rt.iter_full_weights(only=trainable)}
    elif rt.zero_stage == 3:  # partitioned: every rank takes part in gathering them
        weights = rt.iter_full_weights()
        if rt.is_main:
            full = {name: tensor.to("cpu") for name, tensor in weights}
        else:
            for _ in weights:
                pass

    model = rt.unwrapped()
    if not isinstance(model, SavesPretrained):
        raise TypeError(f"{type(model).__name__} cannot be saved as a checkpoint: it has no save_pretrained "
                        "(transformers models have; checkpoints are Hugging Face folders)")

    def save_model(folder: Path) -> None:
        if adapter is not None:
            save_adapter(model, folder, adapter)
        else:
            model.save_pretrained(folder, state_dict=full, safe_serialization=True)
        processor.save_pretrained(folder)

    saved = ckpt.save(state.step, save_model=save_model, trainer_state=trainer_state, val_accuracy=val_accuracy,
                      save_shards=rt.save_deepspeed_state if rt.uses_deepspeed else None,
                      is_main=rt.is_main, barrier=rt.barrier, all_agree=rt.all_agree)
    console.line(f"saved checkpoint {saved.name}")


def restore(checkpoint: Path, state: TrainState, rt: Runtime, optimizer: Optimizer, optim: OptimConfig) -> None:
    """Continue from `checkpoint` exactly: the state (step, data order, RNG, counters, history), the optimiser's
    state (with the optimiser settings in force now, not the saved ones)."""
    saved = CheckpointManager.load_trainer_state(checkpoint)
    state.load_state_dict(saved)
    rt.load_optimizer_state(saved["optimizer"])
    rt.load_deepspeed_state(str(checkpoint))
    apply_optimizer_settings(optimizer, optim)  # the config in force, not the saved groups'
    state.resumed_from = str(checkpoint)
