"""Runs a study's training runs one after another, each as `python -m mhpo_vl.cli train ...` in its own process
(one vLLM engine per process, freed when it exits), its console output in ``<run>/console.log``.

A run folder is in one of four states: ``done`` (summary.json: skipped), ``diverged`` (diverged.json: the trainer
stopped on non-finite updates; a result, skipped; delete the file to retry), ``partial`` (a checkpoint: the trainer
resumes it exactly) or ``new`` (started from scratch: the trainer itself, holding the run's lock, removes what an
attempt killed before its first checkpoint left). Ctrl-C stops the current run and the study; rerunning the same
command continues where it stopped.

The study holds the lock of its folder (``mhpo-vl.lock``, as a training run holds its own) from the first check to
the last run, so a second ``study`` on the same folder is refused; it deletes no file of a run (only the trainer
does, under that run's lock). Before any compute it checks that every run folder is an mhpo-vl run (a folder of
another tool is refused, never cleaned) and that the summary it will build is possible (validation on).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mhpo_vl.study.plan import Plan, Run, StudyError, config_differences

DIVERGED_RC = 3  # `mhpo-vl train`'s exit status for TrainingDivergedError
# After Ctrl-C: how long the training process gets to stop by itself (a terminal sends SIGINT to it too) before it is
# sent SIGINT, then SIGTERM, then SIGKILL; a second SIGINT could cut short its own clean-up.
STOP_GRACE_S = 10.0
Launch = Callable[[list[str], Path], int]


class StudyInterrupted(KeyboardInterrupt):
    pass


@dataclass
class StudyResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def run_state(run_dir: Path) -> str:
    from mhpo_vl.runs.checkpoints import CheckpointManager

    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "diverged.json").is_file():
        return "diverged"
    return "partial" if CheckpointManager(run_dir).latest() is not None else "new"


def train_command(plan: Plan, run: Run) -> list[str]:
    return [sys.executable, "-m", "mhpo_vl.cli", "train", "--config", plan.base_config, "--output-dir", str(run.dir),
            *plan.run_overrides(run)]


def launch_subprocess(command: list[str], log_path: Path) -> int:
    """Run ``command`` with its output appended to ``log_path``; on Ctrl-C let it stop (it got the SIGINT too when
    run from a terminal; forwarded otherwise), then raise StudyInterrupted."""
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise StudyInterrupted() from None


def _stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((None, STOP_GRACE_S), (signal.SIGINT, 60), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def check_configs(plan: Plan, runs: list[Run]) -> None:
    """Before any compute: every run's config resolves with validation on (the summary compares held-out
    accuracies), every existing run folder is an mhpo-vl run, and none was made with another config."""
    from mhpo_vl.runs.run_dir import RunDirError, check_run_folder

    clashes = []
    for run in runs:
        cfg = plan.run_config(run)
        if cfg.trainer.val_every <= 0:
            raise StudyError(f"{run.dir}: trainer.val_every={cfg.trainer.val_every} turns validation off, but the "
                             "study's summary compares each run's held-out accuracy (initial, best, final); set "
                             "trainer.val_every > 0 (in the base config or as an override)")
        try:
            check_run_folder(run.dir)
        except RunDirError as err:
            raise StudyError(str(err)) from None
        diffs = config_differences(run, cfg)
        if diffs:
            clashes.append(f"{run.dir}: " + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else ""))
    if clashes:
        raise StudyError("existing run folders were made with a different config (base YAML or overrides changed?); "
                         "use another --output-dir or delete them:\n  " + "\n  ".join(clashes))


def run_study(plan: Plan, *, launch: Launch = launch_subprocess, log: Callable[[str], None] = print) -> StudyResult:
    from mhpo_vl.runs.run_dir import DirectoryLock, RunDirError

    try:
        lock = DirectoryLock(plan.out_dir, "study").acquire()
    except RunDirError as err:  # another study (or anything of mhpo-vl) holds the folder: its runs are left alone
        raise StudyError(str(err)) from None
    try:
        return _run_study(plan, launch, log)
    finally:
        lock.release()


def _run_study(plan: Plan, launch: Launch, log: Callable[[str], None]) -> StudyResult:
    runs = plan.runs()
    check_configs(plan, runs)
    plan.save()
    result = StudyResult()
    start = time.monotonic()
    for i, run in enumerate(runs, 1):
        state = run_state(run.dir)
        where = f"[{i}/{len(runs)}] {run.name}"
        if state in ("done", "diverged"):
            result.skipped.append(run.name)
            log(f"{where}: {state}, skipped")
            continue
        run.dir.mkdir(parents=True, exist_ok=True)
        log(f"{where}: {'resuming' if state == 'partial' else 'starting'} (study elapsed {_clock(time.monotonic() - start)}; "
            f"log: {run.dir / 'console.log'})")
        run_start = time.monotonic()
        rc = launch(train_command(plan, run), run.dir / "console.log")
        took = _clock(time.monotonic() - run_start)
        if rc == 0 and run_state(run.dir) == "done":
            result.ran.append(run.name)
            log(f"{where}: done in {took}: {_accuracy_line(run.dir)}")
        elif rc == DIVERGED_RC:
            (run.dir / "diverged.json").write_text(json.dumps({"returncode": rc, "log_tail": _tail(run.dir)}, indent=1))
            result.diverged.append(run.name)
            log(f"{where}: DIVERGED after {took} (non-finite updates); recorded, see {run.dir / 'console.log'}")
        else:
            result.failed.append(run.name)
            log(f"{where}: FAILED (exit {rc}) after {took}; last lines of {run.dir / 'console.log'}:\n{_tail(run.dir)}")
    log(f"study: {len(result.ran)} run(s) trained, {len(result.skipped)} skipped, {len(result.diverged)} diverged, "
        f"{len(result.failed)} failed, in {_clock(time.monotonic() - start)}")
    return result


def _accuracy_line(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    start, final, best = (_fmt(s.get(f"val_accuracy_{k}")) for k in ("initial", "final", "best"))
    return f"held-out accuracy {start} -> {final} (best {best})"


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _tail(run_dir: Path, lines: int = 20) -> str:
    path = run_dir / "console.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(no console.log)"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
