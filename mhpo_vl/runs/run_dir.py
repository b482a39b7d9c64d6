"""A run directory holds ONE run: it is bound to that run's settings, held by one process at a time, and never
mixed with another run's files.

* Lock: `<dir>/mhpo-vl.lock` names the holder (pid, host, command) and is held with `flock` for the process's
  lifetime, so the kernel releases it when the process dies however it dies. A second process is refused with the
  holder's pid; a lock file left by a dead process is taken over with a notice. Training and evaluation
  directories both use it.
* Binding: a rerun in a directory that holds a run compares its resolved config with the directory's
  `config.yaml` and refuses, listing every difference, unless `trainer.allow_config_change=true`; then the
  changes are logged, recorded in `config_changes.jsonl`, and apply from the resumed step on (the restored
  optimiser takes the new learning rate, see `mhpo_vl.train.lr_schedule.apply_optimizer_settings`).
* Never mixed: `trainer.resume=false` in a used directory is refused unless `trainer.overwrite=true`, which first
  removes the old run's files (only those: other files in the directory stay). A rerun of a run that stopped before
  its first checkpoint starts again from step 0 with the earlier attempt's metrics removed.
* Ours only: every run writes `mhpo-vl-run.json` (the marker) before anything else. A folder holding run-like files
  (`config.yaml`, `checkpoints/`, ...) without it was made by another tool: it is refused, and nothing in it is
  used or removed, whatever trainer.overwrite / allow_config_change say. (A run of a version that wrote no marker
  is recognised by its config.yaml's sections and checkpoints/index.json, and adopted with a notice.)
* Bound to its data: the marker holds each dataset's fingerprint (rows, sha256 of the loaded samples:
  mhpo_vl.runs.fingerprint); a resume on changed data is refused naming the dataset and what changed, unless
  `trainer.allow_config_change=true` (then logged and recorded in `config_changes.jsonl`, as settings are).
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from mhpo_vl.config import RunConfig, config_to_dict

if TYPE_CHECKING:  # the lock is used by evaluation too, which should not pay for importing torch up front
    from mhpo_vl.runs.checkpoints import CheckpointManager

log = logging.getLogger(__name__)

LOCK_FILE = "mhpo-vl.lock"
CHANGES_FILE = "config_changes.jsonl"
MARKER_FILE = "mhpo-vl-run.json"  # written by every training run first: this folder is an mhpo-vl run
# Everything a training run writes into its directory (the one list `trainer.overwrite` clears).
RUN_FILES = ("config.yaml", CHANGES_FILE, "metrics.jsonl", "summary.json", "checkpoints", "tensorboard",
             "wandb", MARKER_FILE)
# The sections of config.yaml: a folder without the marker whose config.yaml has them is a run of an older version.
CONFIG_SECTIONS = frozenset({"model", "data", "rollout", "reward", "algorithm", "optim", "warmstart", "trainer"})
# What an attempt that reached no checkpoint leaves behind; config.yaml alone does not make a directory "used".
ATTEMPT_FILES = ("metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "wandb")
# Settings that do not change what a run computes, so a rerun may differ in them freely.
NOT_BOUND = frozenset({"trainer.output_dir", "trainer.resume", "trainer.overwrite", "trainer.allow_config_change",
                       "trainer.num_threads", "reward.num_workers", "trainer.loggers", "trainer.collective_timeout_s",
                       "trainer.keep_last"})
UNSET = "<unset>"


class RunDirError(ValueError):
    """The directory is held by another process, bound to other settings, or holds another run (the CLI prints
    these without a traceback, as it does ValueErrors)."""


# ----------------------------------------------------------------------------------------------- lock ---


class DirectoryLock:
    """`with DirectoryLock(folder, "evaluation"):` or `.acquire()` / `.release()`."""

    def __init__(self, folder: str | Path, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._file: TextIO | None = None

    def acquire(self) -> DirectoryLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")  # never truncate before holding it: the holder's details stay readable
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                handle.close()
                raise RunDirError(
                    f"{self.folder} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                    f"({holder.get('what', '?')}, started {holder.get('started', '?')}: {holder.get('command', '?')})."
                    f" Wait for it to finish or stop it, or use another directory (lock file: {self.path})") from None
            if _same_file(self.path, handle):  # else a releasing holder removed it between our open and flock
                break
            handle.close()
        previous = _read_holder(self.path)
        if previous:
            try:
                _take_over(self.path, previous)
            except RunDirError:
                handle.close()
                raise
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)[:500]}))
        handle.flush()
        os.fsync(handle.fileno())
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is None:
            return
        if _same_file(self.path, self._file):
            self.path.unlink()
        self._file.close()  # closing drops the flock
        self._file = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release() (a Trainer that was never closed)
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit os/pathlib may be gone; the kernel drops the flock
            pass


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {"pid": "?", "command": "(unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


def _same_file(path: Path, handle) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _take_over(path: Path, previous: dict[str, Any]) -> None:
    """The lock was free although the file names a holder: that process ended without releasing it (a kill). On
    another host its pid says nothing here; flock over a network filesystem is not trusted then."""
    host, pid = previous.get("host"), previous.get("pid")
    if host not in (None, socket.gethostname()):
        raise RunDirError(f"{path} names pid {pid} on host {host} as holding {path.parent}; it cannot be checked "
                          "from this host. If that process is gone, delete the lock file and rerun")
    state = "no longer running" if not _alive(pid) else "alive but not holding the lock (its pid was reused)"
    log.warning("taking over the stale lock %s left by pid %s (%s, started %s), which is %s", path, pid,
                previous.get("what", "?"), previous.get("started", "?"), state)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


# -------------------------------------------------------------------------------------- config binding ---


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(saved: dict[str, Any], cfg: RunConfig) -> list[tuple[str, Any, Any]]:
    """(key, run's value, new value) for every bound setting that differs. Keys missing from the saved tree
    (written by a version without them) count as their defaults."""
    saved_flat = _flatten(saved)
    # a section that is null by default (model.lora) and set in the run: its keys, not the default's null
    defaults = {k: v for k, v in _flatten(config_to_dict(RunConfig())).items()
                if not any(s.startswith(f"{k}.") for s in saved_flat)}
    before = {**defaults, **saved_flat}
    now = _flatten(config_to_dict(cfg))
    return [(key, before.get(key, UNSET), now.get(key, UNSET)) for key in sorted(set(before) | set(now))
            if key not in NOT_BOUND and before.get(key, UNSET) != now.get(key, UNSET)]


def _show(value: Any) -> str:
    return UNSET if value is UNSET else repr(value)


# ------------------------------------------------------------------------------------- the directory ---


def _single_process(obj: Any) -> list[Any]:
    return [obj]


class RunDirectory:
    def __init__(self, cfg: RunConfig, checkpoints: CheckpointManager):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir)
        self.checkpoints = checkpoints
        self.lock: DirectoryLock | None = None

    def open(self, *, is_main: bool = True, share: Callable[[Any], list[Any]] = _single_process) -> Path | None:
        """Lock the directory, check it, write config.yaml; return the checkpoint to resume from (None: start at
        step 0). Every process calls this (`share` = all_gather_objects); the main one does the work."""
        resume, error = None, None
        if is_main:
            try:
                resume = self._open_main()
            except Exception as exc:  # re-raised below, after the other processes have heard of it
                error = exc
        name, message = share((str(resume) if resume else None, str(error) if error else None))[0]
        if error is not None:
            raise error
        if message is not None:
            raise RunDirError(f"the main process could not use {self.out}: {message}")
        return Path(name) if name else None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _open_main(self) -> Path | None:
        from mhpo_vl.runs.atomic_io import write_durably

        self.lock = DirectoryLock(self.out, "training run").acquire()
        try:
            self._check_ours()
            resume = self._prepare()
            marker = self.read_marker()  # kept across resumes: when the run began, its data's fingerprints
            marker.update(tool="mhpo-vl", what="training run")
            marker.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S"))
            write_durably(self.out / MARKER_FILE, json.dumps(marker, indent=1))  # before config.yaml: see _check_ours
            write_durably(self.out / "config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        except BaseException:
            self.release()
            raise
        return resume

    def _used(self) -> list[str]:
        return [name for name in ATTEMPT_FILES if (self.out / name).exists()]

    def read_marker(self) -> dict[str, Any]:
        try:
            marker = json.loads((self.out / MARKER_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return marker if isinstance(marker, dict) else {}

    def _check_ours(self) -> None:
        check_run_folder(self.out)

    def bind_data(self, fingerprints: dict[str, dict[str, Any]], resume: Path | None, *, is_main: bool = True,
                  share: Callable[[Any], list[Any]] = _single_process) -> None:
        """Record the datasets' fingerprints (mhpo_vl.runs.fingerprint) in the marker; resuming (`resume` given),
        compare them with the run's first: changed data is refused unless trainer.allow_config_change=true, then
        logged and appended to config_changes.jsonl. Every process calls this; the main one does the work."""
        error = None
        if is_main:
            try:
                self._bind_data(fingerprints, resume)
            except Exception as exc:  # re-raised below, after the other processes have heard of it
                error = exc
        message = share(str(error) if error else None)[0]
        if error is not None:
            raise error
        if message is not None:
            raise RunDirError(f"the main process could not use {self.out}: {message}")

    def _bind_data(self, fingerprints: dict[str, dict[str, Any]], resume: Path | None) -> None:
        from mhpo_vl.runs.atomic_io import write_durably
        from mhpo_vl.runs.fingerprint import describe_change

        marker = self.read_marker()
        saved = marker.get("data")
        if resume is not None and not isinstance(saved, dict):
            log.warning("%s: the run recorded no fingerprints of its data (an older version); recording the current "
                        "data's now, so later resumes are checked against it", self.out)
        elif resume is not None and isinstance(saved, dict):
            changes = [change for key, now in fingerprints.items()
                       if (change := describe_change(key, saved.get(key) or {}, now))]
            listing = "\n  ".join(changes)
            if changes and not self.cfg.trainer.allow_config_change:
                raise RunDirError(
                    f"{self.out} holds a run trained on other data; resuming it from {resume.name} would continue its "
                    f"data order over changed rows:\n  {listing}\nTo continue it on this data anyway, add "
                    "trainer.allow_config_change=true (recorded in config_changes.jsonl); to start it again, "
                    "trainer.overwrite=true; or choose another trainer.output_dir")
            if changes:
                log.warning("trainer.allow_config_change=true: resuming %s on changed data:\n  %s", self.out, listing)
                self._append_change({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": resume.name,
                                     "data_changes": changes})
        marker["data"] = fingerprints
        write_durably(self.out / MARKER_FILE, json.dumps(marker, indent=1))

    def _prepare(self) -> Path | None:
        t = self.cfg.trainer
        used = self._used()
        if used and t.overwrite:
            log.warning("trainer.overwrite=true: removing the previous run's files from %s: %s", self.out,
                        ", ".join(n for n in RUN_FILES if (self.out / n).exists()))
            _remove(self.out, RUN_FILES)
            return None
        if used and not t.resume:
            raise RunDirError(f"{self.out} already holds a run ({', '.join(used)}) and trainer.resume=false: "
                              "starting a new run there would mix the two. Set trainer.overwrite=true to remove the "
                              "old run's files first, drop trainer.resume=false to continue it, or choose another "
                              "trainer.output_dir")
        if not used:
            return None
        changes = self._check_settings(used)
        self.checkpoints.remove_partial()
        resume = self.checkpoints.resume_point()
        if resume is None:
            log.warning("%s holds an earlier attempt of this run that stopped before its first checkpoint (no "
                        "checkpoint to resume from): removing its %s and starting again from step 0", self.out,
                        ", ".join(used))
            _remove(self.out, ATTEMPT_FILES)
        if changes:
            self._record(changes, resume)
        return resume

    def _check_settings(self, used: list[str]) -> list[tuple[str, Any, Any]]:
        path = self.out / "config.yaml"
        if not path.is_file():
            raise RunDirError(f"{self.out} holds a run ({', '.join(used)}) but no config.yaml, so the settings it "
                              "ran with are unknown; set trainer.overwrite=true to start again there, or choose "
                              "another trainer.output_dir")
        try:
            saved = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RunDirError(f"{path}: unreadable YAML ({exc})") from None
        if not isinstance(saved, dict):
            raise RunDirError(f"{path}: expected a mapping of settings, got {type(saved).__name__}")
        changes = config_differences(saved, self.cfg)
        listing = "\n  ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in changes)
        if changes and not self.cfg.trainer.allow_config_change:
            raise RunDirError(
                f"{self.out} holds a run made with other settings; resuming it with these would change:\n  "
                f"{listing}\nTo continue it with the new settings (they apply from the resumed step on, the "
                "learning rate included), add trainer.allow_config_change=true; to start it again, "
                "trainer.overwrite=true; or choose another trainer.output_dir")
        if changes:
            log.warning("trainer.allow_config_change=true: resuming %s with changed settings:\n  %s", self.out,
                        listing)
        return changes

    def _record(self, changes: list[tuple[str, Any, Any]], resume: Path | None) -> None:
        record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": resume.name if resume else None,
                  "changes": {key: [old, new] for key, old, new in changes}}
        self._append_change(record)

    def _append_change(self, record: dict[str, Any]) -> None:
        with open(self.out / CHANGES_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def check_run_folder(folder: Path) -> None:
    """Refuse (RunDirError) a folder with run-like files that mhpo-vl did not write; nothing is read further or
    removed. A run of a version that wrote no marker (config.yaml with this package's sections, an index.json of
    its checkpoints) passes with a notice. `train` and `study` check every run folder with it first."""
    present = [name for name in RUN_FILES if name != MARKER_FILE and (folder / name).exists()]
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        marker = None
    if not present or (isinstance(marker, dict) and marker.get("tool") == "mhpo-vl"):
        return
    if _older_run(folder):
        log.warning("%s holds a run of an mhpo-vl version that wrote no %s; continuing it (the marker is written "
                    "when it is resumed)", folder, MARKER_FILE)
        return
    raise RunDirError(f"{folder} holds {', '.join(present)} but no {MARKER_FILE} (the marker every mhpo-vl "
                      "training run writes first): it was not made by mhpo-vl train, and nothing in it is used or "
                      "removed (trainer.overwrite and trainer.allow_config_change included). Choose another "
                      "trainer.output_dir")


def _older_run(folder: Path) -> bool:
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        index = json.loads((folder / "checkpoints" / "index.json").read_text()) \
            if (folder / "checkpoints").exists() else {}
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (isinstance(saved, dict) and {"model", "data", "rollout", "trainer"} <= set(saved) <= CONFIG_SECTIONS
            and isinstance(index, dict) and (not index or "latest" in index))


def release_run_dir_on_error(method):
    """For a method of an object with a `run_dir` (RunDirectory): an exception out of it (Ctrl-C included)
    releases the directory's lock, so another start in this process (a notebook, a test) can take it."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            run_dir = getattr(self, "run_dir", None)
            if run_dir is not None:
                run_dir.release()
            raise
    return wrapper


def _remove(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
