"""Atomic, verified checkpoints as Hugging Face folders (safetensors) that transformers and vLLM load, plus the
trainer state needed to resume exactly (optimizer, RNG, data position, step, validation history).

Layout under `<output_dir>/checkpoints/`:
  step_000010/            model + processor/tokenizer (save_pretrained), trainer_state.pt, trainer_state.json,
                          manifest.json (size and sha256 of every other file in the folder)
  index.json              {"latest": "step_000010", "best": "step_000005", "best_val_accuracy": 0.42, "history": [...]}
  damaged-step_000012/    a checkpoint that failed verification, moved aside on resume (never loaded; delete it)
A checkpoint is written to a `.tmp-*` folder, every file and folder in it is fsynced, then it is renamed into place
(and the rename fsynced), and index.json is replaced the same way: a kill or power cut at any moment leaves either
the old or the new checkpoint, never half of one. On resume every file is checked against the manifest and a
damaged checkpoint is passed over for the newest intact one, with a warning.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.runs.atomic_io import fsync_dir, write_durably, write_synced

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DISK_NEARLY_FULL_BYTES = 64 * 2**20  # below this much free space, a failed write is taken as a full disk


class CheckpointError(ValueError):
    """A checkpoint folder or index.json that cannot be used (the CLI prints these without a traceback)."""


class DiskFullError(OSError):
    """ENOSPC, whichever writer hit it (torch's C++ writer reports a full disk without an errno)."""


# ------------------------------------------------------------------------------- files on disk -------------


def _digest(path: Path, *, sync: bool = False) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
        if sync:  # flushes what any process wrote to this file (fsync acts on the file, not on this fd)
            os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _digest_and_sync(path: Path) -> dict[str, Any]:
    return _digest(path, sync=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: Path) -> None:
    """fsync every file and folder under `folder` and write its manifest (sizes, sha256). Files are hashed in
    parallel threads: hashlib releases the GIL, so a multi-GB checkpoint costs seconds per core."""
    files = _files(folder)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        entries = dict(zip((str(p.relative_to(folder)) for p in files), pool.map(_digest_and_sync, files)))
    write_synced(folder / MANIFEST, json.dumps({"files": entries}, indent=1))  # the folder itself is staged
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        fsync_dir(sub)
    fsync_dir(folder)


def verify(folder: Path) -> list[str]:
    """What is wrong with checkpoint `folder` against its manifest ([] = intact)."""
    path = folder / MANIFEST
    if not path.is_file():
        return [f"{MANIFEST} is missing (cannot check the files)"]
    try:
        expected = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{MANIFEST} is unreadable ({exc})"]
    problems = []
    for name, want in expected.items():
        file = folder / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != want["size"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, the manifest says {want['size']}")
        elif _digest(file)["sha256"] != want["sha256"]:
            problems.append(f"{name} has other contents than were saved (sha256 differs)")
    return problems


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC anywhere in the exception chain, safetensors' "(os error 28)", or torch's C++ writer failing
    ("unexpected pos ...", "basic_ios::clear") while the disk is (nearly) full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < DISK_NEARLY_FULL_BYTES
    except OSError:
        return False


# ------------------------------------------------------------------------------------ the manager ---------


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int = 2):
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = max(1, keep_last)

    def index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        if not path.exists():
            return {}
        try:
            index = json.loads(path.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None
        if not isinstance(index, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(index).__name__}")
        return index

    def latest(self) -> Path | None:
        name = self.index().get("latest")
        return self.root / name if name else None

    def best(self) -> Path | None:
        name = self.index().get("best")
        return self.root / name if name else None

    def save(self, step: int, *, save_model: Callable[[Path], None], trainer_state: dict[str, Any],
             val_accuracy: float | None, save_shards: Callable[[Path], None] | None = None, is_main: bool = True,
             barrier: Callable[[], None] = lambda: None, all_agree: Callable[[bool], bool] = lambda ok: ok) -> Path:
        """Write checkpoint `step`: `save_model(folder)` writes the HF model folder and trainer_state is torch-saved
        beside it (main process); `save_shards(folder)`, when given, runs on EVERY process (DeepSpeed's
        per-rank optimizer shards). With several processes every rank calls this, in three fenced phases:
        main prepares the staging folder | all write into it | main seals it, renames it into place and updates
        the index. A failure on any rank fails the save on every rank (`all_agree`), the staging folder is
        removed, and a full disk is reported as ENOSPC naming the folder.
        """
        name = f"step_{step:06d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier()  # the staging folder exists (and is empty) before any rank writes into it

        def write() -> None:
            if save_shards is not None:
                save_shards(tmp)
            if is_main:
                save_model(tmp)
                with open(tmp / "trainer_state.pt", "wb") as f:  # a Python file: a full disk raises ENOSPC here
                    torch.save(trainer_state, f)
                (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "val_accuracy": val_accuracy},
                                                                   indent=1))

        def commit() -> None:
            if is_main:
                seal(tmp)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                fsync_dir(self.root)
                self._record(name, step, val_accuracy)

        try:
            for phase in (write, commit):  # every rank's files are written before the folder is committed
                _on_every_rank(phase, all_agree, f"saving checkpoint {name}")
        except BaseException as exc:
            if is_main:
                failure = self._failed(exc, name, tmp)
                if failure is not exc:
                    raise failure from exc
            raise
        return final

    def _failed(self, exc: BaseException, name: str, tmp: Path) -> BaseException:
        """Remove the staging folder; name a full disk as such (measured before the folder's space is freed)."""
        disk_full = isinstance(exc, Exception) and _is_disk_full(exc, self.root)
        shutil.rmtree(tmp, ignore_errors=True)
        if not disk_full:
            return exc
        previous = self.index().get("latest") if (self.root / "index.json").exists() else None
        return DiskFullError(errno.ENOSPC, (
            f"No space left on device while saving checkpoint {name} into {self.root} ({exc.__class__.__name__}: "
            f"{exc}); the partial folder {tmp.name} was removed; the previous checkpoint "
            f"{previous or '(none)'} is intact. Free some space and rerun the same command to resume."))

    def _record(self, name: str, step: int, val_accuracy: float | None) -> None:
        index = self.index()
        index["latest"] = name
        best_acc = index.get("best_val_accuracy")
        if val_accuracy is not None and (best_acc is None or val_accuracy > best_acc):
            index["best"], index["best_val_accuracy"] = name, val_accuracy
        index.setdefault("history", []).append({"name": name, "step": step, "val_accuracy": val_accuracy})
        self._write_index(index)
        self._prune(index)

    def _write_index(self, index: dict[str, Any]) -> None:
        write_durably(self.root / "index.json", json.dumps(index, indent=1))

    def _prune(self, index: dict[str, Any]) -> None:
        """Keep the newest `keep_last` checkpoints and the best one, and never fewer than two: when the best is the
        latest (keep_last=1), the previous one stays too, so a damaged latest checkpoint (a truncated file) always
        has an intact one behind it to resume from. The history in index.json stays whole."""
        on_disk = {path.name for path in self.root.glob("step_*")}
        newest_first = [n for n in dict.fromkeys(h["name"] for h in reversed(index.get("history", []))) if n in on_disk]
        keep = set(newest_first[: self.keep_last]) | {index.get("best"), index.get("latest")}
        for name in newest_first:
            if len(keep & on_disk) >= 2:
                break
            keep.add(name)
        for path in self.root.glob("step_*"):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- resume ------

    def remove_partial(self) -> None:
        """Staging folders of saves cut short by a kill: never a checkpoint, removed (main process)."""
        for tmp in sorted(self.root.glob(".tmp-*")):
            log.warning("removing %s: a checkpoint save that was interrupted before it completed", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def resume_point(self) -> Path | None:
        """The newest checkpoint whose files match its manifest (main process). A damaged newer one is moved
        aside as `damaged-<name>` with a warning, and index.json is rewound to the checkpoint resumed from:
        later history entries go, best is recomputed. None when there are no checkpoints; CheckpointError
        when there are some and none is intact."""
        folders = sorted(self.root.glob("step_*"), key=lambda p: p.name, reverse=True)
        damage = []
        for folder in folders:
            problems = verify(folder)
            if not problems:
                self._rewind(folder)
                return folder
            damage.append(f"{folder.name}: {'; '.join(problems)}")
            log.warning("checkpoint %s is damaged (%s); moving it aside to %s and trying the previous one",
                        folder, "; ".join(problems), f"damaged-{folder.name}")
            shutil.rmtree(folder.with_name(f"damaged-{folder.name}"), ignore_errors=True)
            os.replace(folder, folder.with_name(f"damaged-{folder.name}"))
        if damage:
            raise CheckpointError(f"no intact checkpoint under {self.root}: {' | '.join(damage)}. Start the run "
                                  "again with trainer.overwrite=true (clears the directory), or use another "
                                  "trainer.output_dir")
        return None

    def _rewind(self, folder: Path) -> None:
        try:
            index = self.index()
        except CheckpointError as exc:
            log.warning("%s; rebuilding it from the checkpoint folders", exc)
            index = {"history": self._history_from_folders()}
        step = _step_of(folder.name)
        # Entries of pruned checkpoints stay (their validation scores are the run's record); later ones go.
        history = [h for h in index.get("history", []) if h["step"] <= step]
        scored = [h for h in history if h.get("val_accuracy") is not None and (self.root / h["name"]).is_dir()]
        best = max(scored, key=lambda h: h["val_accuracy"], default=None)  # the earliest of equal scores
        rewound = {"latest": folder.name, "history": history}
        if best is not None:
            rewound.update(best=best["name"], best_val_accuracy=best["val_accuracy"])
        if rewound != index:
            self._write_index(rewound)

    def _history_from_folders(self) -> list[dict[str, Any]]:
        history = []
        for folder in sorted(self.root.glob("step_*")):
            info = json.loads((folder / "trainer_state.json").read_text())
            history.append({"name": folder.name, "step": info["step"], "val_accuracy": info["val_accuracy"]})
        return history

    @staticmethod
    def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
        return torch.load(checkpoint / "trainer_state.pt", weights_only=False)


def _step_of(name: str) -> int:
    return int(name.split("_")[-1])


def _on_every_rank(phase: Callable[[], None], all_agree: Callable[[bool], bool], what: str) -> None:
    """Run `phase` here; if it failed on any rank, raise on every rank (the failing one with its own error), so no
    rank waits forever for one that gave up."""
    error: Exception | None = None
    try:
        phase()
    except Exception as exc:  # re-raised below, after every rank has heard of it
        error = exc
    if not all_agree(error is None):
        raise error or CheckpointError(f"{what} failed on another process (see its error)")
