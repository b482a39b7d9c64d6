"""Atomic checkpoints as Hugging Face folders (safetensors) that transformers and vLLM load, plus the trainer
state needed to resume exactly (optimizer, RNG, data position, step, validation history).

Layout under `<output_dir>/checkpoints/`:
  step_000010/            model + processor/tokenizer (save_pretrained), trainer_state.pt, trainer_state.json
  index.json              {"latest": "step_000010", "best": "step_000005", "best_val_accuracy": 0.42}
A checkpoint is written to a `.tmp-*` folder and renamed into place, and index.json is replaced atomically, so a
kill at any moment leaves either the old or the new checkpoint, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int = 1):
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)

    def index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def latest(self) -> Path | None:
        name = self.index().get("latest")
        return self.root / name if name else None

    def best(self) -> Path | None:
        name = self.index().get("best")
        return self.root / name if name else None

    def save(self, step: int, *, save_model: Callable[[Path], None], trainer_state: dict[str, Any],
             val_accuracy: float | None, save_shards: Callable[[Path], None] | None = None, is_main: bool = True,
             barrier: Callable[[], None] = lambda: None) -> Path:
        """Write checkpoint `step`: `save_model(folder)` writes the HF model folder and trainer_state is torch-saved
        beside it (main process); `save_shards(folder)`, when given, runs on EVERY process (DeepSpeed's
        per-rank optimizer shards). With several processes every rank calls this, in three fenced phases:
        main prepares the staging folder | all write into it | main renames it into place and updates the index.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:06d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier()  # the staging folder exists (and is empty) before any rank writes into it
        if save_shards is not None:
            save_shards(tmp)
        if is_main:
            save_model(tmp)
            torch.save(trainer_state, tmp / "trainer_state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "val_accuracy": val_accuracy}, indent=1))
        barrier()  # every rank's files are written before the folder becomes the checkpoint
        if is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            index = self.index()
            index["latest"] = name
            best_acc = index.get("best_val_accuracy")
            if val_accuracy is not None and (best_acc is None or val_accuracy > best_acc):
                index["best"], index["best_val_accuracy"] = name, val_accuracy
            index.setdefault("history", []).append({"name": name, "step": step, "val_accuracy": val_accuracy})
            self._write_index(index)
            self._prune(index)
        barrier()  # nobody reads index.json before it names the new checkpoint
        return final

    def _write_index(self, index: dict[str, Any]) -> None:
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.root / "index.json")

    def _prune(self, index: dict[str, Any]) -> None:
        """Keep the newest `keep_last` checkpoints and the best one; the history in index.json stays whole."""
        newest_first = list(dict.fromkeys(h["name"] for h in reversed(index.get("history", []))))
        keep = set(newest_first[: self.keep_last]) | {index.get("best"), index.get("latest")}
        for path in self.root.glob("step_*"):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
        return torch.load(checkpoint / "trainer_state.pt", weights_only=False)
