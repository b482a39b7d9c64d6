"""Everything a checkpoint restores besides the weights and the optimiser: one object the trainer owns.

`TrainState.state_dict()` / `load_state_dict()` (torchtitan's pattern): checkpointing saves and loads only through
them, so a new counter is one field here, not an edit to the loop, the saver, the restorer and the summary.
The dictionary's keys are the checkpoint format (`trainer_state` in each checkpoint) and stay as they were.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mhpo_vl.runs.machine import machine_info
from mhpo_vl.train.data_order import PromptOrder
from mhpo_vl.train.update import NonfiniteUpdates


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class TrainState:
    """The step counter, the data order's position, the global RNGs, the non-finite update counters, the
    validation history and what the summary adds (warm-start results), and the wall time of earlier segments."""

    order: PromptOrder
    nonfinite: NonfiniteUpdates
    step: int = 0
    val_history: list[dict[str, Any]] = field(default_factory=list)
    summary_extra: dict[str, Any] = field(default_factory=dict)
    wall_seconds_before: float = 0.0  # earlier segments of this run (up to the checkpoint resumed from)
    resumed_from: str | None = None  # not saved: where this segment started from
    fit_started: float | None = None  # not saved: perf_counter() when this segment's fit() began

    def wall_seconds(self) -> float:
        """Time in fit() over the whole run: the earlier segments (up to the checkpoint this one resumed from) plus
        this one. Time a killed segment spent after its last checkpoint is not counted: it was redone."""
        now = time.perf_counter() - self.fit_started if self.fit_started is not None else 0.0
        return self.wall_seconds_before + now

    def state_dict(self) -> dict[str, Any]:
        """The RNG states are read now: call it at the point a resumed run must continue from."""
        return {
            "step": self.step, "order": self.order.state_dict(), "rng": rng_state(),
            "val_history": self.val_history, "nonfinite_total": self.nonfinite.total,
            "nonfinite_in_a_row": self.nonfinite.in_a_row, "summary_extra": self.summary_extra,
            "wall_seconds": self.wall_seconds(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.order.load_state_dict(state["order"])
        set_rng_state(state["rng"])
        self.val_history = state["val_history"]
        self.nonfinite.total = state["nonfinite_total"]
        self.nonfinite.in_a_row = state["nonfinite_in_a_row"]
        self.summary_extra = state.get("summary_extra", {})
        self.wall_seconds_before = state.get("wall_seconds", 0.0)

    def summary(self, *, loss: str) -> dict[str, Any]:
        """`summary.json`: start / final / best held-out accuracy, the history, time, the machine."""
        accs = [v["accuracy"] for v in self.val_history]
        return {
            "val_accuracy_initial": accs[0] if accs else None,
            "val_accuracy_final": accs[-1] if accs else None,
            "val_accuracy_best": max(accs) if accs else None,
            "steps": self.step, "wall_seconds": self.wall_seconds(), "loss": loss,
            "nonfinite_updates": self.nonfinite.total, "resumed_from": self.resumed_from,
            "val_history": self.val_history, "machine": machine_info(), **self.summary_extra,
        }
