"""Fault injection for training run directories, checkpoints and metrics (issue 10: items 2, 3, 5-9, 13 and the
summary's wall time). Each test first reproduced its fault on the code before the fix (see the commit history),
mostly through the checkpoint manager, the metrics writer and the run-directory module directly; the few that
need real training runs use the HF sampler on the tiny model and are marked slow."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import REPO, RUN_ENV, kill_when, small_overrides

from mhpo_vl.config import load_config, save_config
from mhpo_vl.runs.checkpoints import CheckpointManager
from mhpo_vl.runs.loggers import MetricsWriter, read_metrics

CHILD_ENV = {**RUN_ENV, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [RUN_ENV.get("PYTHONPATH")])])}


# ------------------------------------------------------------------------------------------------ helpers --


def _fake_model_saver(step, files=("model.safetensors",)):
    def save(folder):
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"{name} of step {step}\n" * 50)
    return save


def _save(mgr, step, val=None, **kw):
    return mgr.save(step, save_model=_fake_model_saver(step), trainer_state={"step": step}, val_accuracy=val, **kw)


def _used_run_dir(out: Path, model_dir: Path, **extra) -> list[str]:
    """A run directory as a killed run leaves it: config.yaml, a checkpoint at step 2, metrics of steps 1-3.
    Returns the overrides that made it (the HF sampler: nothing here starts vLLM)."""
    overrides = small_overrides(model_dir, out, **{"rollout.backend": "hf", **extra})
    out.mkdir(parents=True)
    save_config(load_config(None, overrides), out / "config.yaml")
    _save(CheckpointManager(out), 2)
    rows = [json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(rows))
    return overrides


def _run_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "mhpo-vl.lock"}


# ------------------------------------------------------------------------ 2: rerun with changed settings --


def test_a_rerun_with_changed_settings_is_refused_and_lists_every_difference(tmp_path, tiny_vl_model_dir):
    from mhpo_vl.runs.run_dir import RunDirError
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    overrides = _used_run_dir(out, tiny_vl_model_dir)
    before = _run_files(out)
    changed = overrides + ["optim.lr=0.1", "algorithm.loss=grpo", "rollout.n=2", "trainer.num_threads=2"]
    with pytest.raises(RunDirError) as err:
        build_trainer(load_config(None, changed))
    message = str(err.value)
    assert "optim.lr: 0.001 -> 0.1" in message
    assert "algorithm.loss: 'mhpo' -> 'grpo'" in message
    assert "rollout.n: 4 -> 2" in message
    assert "num_threads" not in message  # how many threads run it changes nothing in the run's results
    assert "trainer.allow_config_change=true" in message
    assert _run_files(out) == before  # nothing was touched, config.yaml included


def test_config_differences_compare_against_the_defaults_for_keys_an_older_run_did_not_have(tmp_path):
    from mhpo_vl.runs.run_dir import config_differences

    cfg = load_config(None, ["optim.lr=0.5", "data.train={name: geosynth, split: train, options: {n: 3}}"])
    saved = yaml.safe_load(yaml.safe_dump({"optim": {"lr": 0.5}, "data": {"train": {
        "name": "geosynth", "split": "train", "options": {"n": 3, "seed": 1}}}}))
    # Keys the saved file lacks (written by an older version) count as their defaults; only real changes remain.
    assert config_differences(saved, cfg) == [("data.train.options.seed", 1, "<unset>")]


@pytest.mark.slow
def test_an_allowed_config_change_is_recorded_and_applied_learning_rate_included(tmp_path, tiny_vl_model_dir):
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    base = small_overrides(tiny_vl_model_dir, out, **{"rollout.backend": "hf", "optim.lr": "5e-4"})
    first = build_trainer(load_config(None, base))
    first.save_checkpoint(None)
    first.close()
    second = build_trainer(load_config(None, base + ["optim.lr=0.1", "algorithm.loss=grpo",
                                               "trainer.allow_config_change=true"]))
    try:
        assert second.resumed_from.endswith("step_000000")
        # The optimiser's state came from the checkpoint (lr 5e-4 in its param groups); the new lr applies.
        assert [g["lr"] for g in second.optimizer.param_groups] == [0.1]
        assert second.loss_fn.spec.name == "grpo"
        changes = [json.loads(line) for line in (out / "config_changes.jsonl").read_text().splitlines()]
        assert changes[-1]["changes"] == {"algorithm.loss": ["mhpo", "grpo"], "optim.lr": [0.0005, 0.1]}
        assert changes[-1]["resumed_from"] == "step_000000"
        assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.1  # bound to the new settings
    finally:
        second.close()


def test_apply_optimizer_settings_overrides_what_load_state_dict_restored():
    from mhpo_vl.config import OptimConfig
    from mhpo_vl.train.lr_schedule import apply_optimizer_settings

    params = [torch.nn.Parameter(torch.ones(2))]
    saved = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.01).state_dict()
    optimizer = torch.optim.AdamW(params, lr=0.1, weight_decay=0.0, betas=(0.8, 0.9))
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] == 5e-4  # the fault: the old run's lr came back with the state
    apply_optimizer_settings(optimizer, OptimConfig(lr=0.1, weight_decay=0.0, betas=(0.8, 0.9), eps=1e-7))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (0.1, 0.0, (0.8, 0.9), 1e-7)


# ------------------------------------------------------------------ 3: resume=false in a used directory --


def test_resume_false_in_a_used_directory_is_refused(tmp_path, tiny_vl_model_dir):
    from mhpo_vl.runs.run_dir import RunDirError
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    overrides = _used_run_dir(out, tiny_vl_model_dir)
    before = _run_files(out)
    with pytest.raises(RunDirError, match=r"trainer\.resume=false.*trainer\.overwrite=true"):
        build_trainer(load_config(None, overrides + ["trainer.resume=false"]))
    assert _run_files(out) == before


def test_overwrite_clears_the_old_run_before_the_new_one_starts(tmp_path, tiny_vl_model_dir, caplog):
    from mhpo_vl.runs.run_dir import RunDirectory

    out = tmp_path / "run"
    overrides = _used_run_dir(out, tiny_vl_model_dir)
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_text("old")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # not a run file: kept
    (out / "checkpoints" / ".tmp-step_000004").mkdir()  # a save cut short by a kill
    cfg = load_config(None, overrides + ["trainer.overwrite=true", "optim.lr=0.25"])
    run_dir = RunDirectory(cfg, CheckpointManager(out))
    try:
        assert run_dir.open() is None  # a new run: nothing to resume
    finally:
        run_dir.release()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "mhpo-vl-run.json", "notes.txt"]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.25
    assert "overwrite" in caplog.text and "metrics.jsonl" in caplog.text


# ---------------------------------------------------------------------- 5: checkpoints verified on load --


def test_every_checkpoint_file_is_recorded_with_its_size_and_sha256(tmp_path):
    mgr = CheckpointManager(tmp_path)
    folder = mgr.save(1, save_model=_fake_model_saver(1, ("model.safetensors", "deepspeed/state/shard.pt")),
                      trainer_state={"step": 1}, val_accuracy=None)
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    on_disk = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest) == set(on_disk) == {"model.safetensors", "deepspeed/state/shard.pt", "trainer_state.pt",
                                              "trainer_state.json"}
    for name, path in on_disk.items():
        assert manifest[name] == {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()
    elif how == "flip":  # same size, one byte changed: only the hash sees it
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "manifest":
        (path.parent / "manifest.json").unlink()


@pytest.mark.parametrize("how", ["truncate", "delete", "flip", "manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, how, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step, acc in [(1, 0.2), (2, 0.3), (3, 0.9)]:
        _save(mgr, step, acc)
    _damage(tmp_path / "checkpoints" / "step_000003" / "model.safetensors", how)
    assert mgr.resume_point().name == "step_000002"
    assert "step_000003" in caplog.text and ("model.safetensors" in caplog.text or "manifest.json" in caplog.text)
    # The damaged folder is moved aside (kept for a look, never resumed or evaluated); the index forgets it.
    root = tmp_path / "checkpoints"
    assert not (root / "step_000003").exists() and (root / "damaged-step_000003").is_dir()
    index = mgr.index()
    assert (index["latest"], index["best"], index["best_val_accuracy"]) == ("step_000002", "step_000002", 0.3)
    assert [h["step"] for h in index["history"]] == [1, 2]


def test_without_any_intact_checkpoint_the_error_lists_the_damage(tmp_path):
    from mhpo_vl.runs.checkpoints import CheckpointError

    mgr = CheckpointManager(tmp_path, keep_last=2)
    _save(mgr, 1)
    _save(mgr, 2)
    _damage(tmp_path / "checkpoints" / "step_000001" / "trainer_state.pt", "delete")
    _damage(tmp_path / "checkpoints" / "step_000002" / "model.safetensors", "truncate")
    with pytest.raises(CheckpointError) as err:
        mgr.resume_point()
    message = str(err.value)
    assert "step_000001: trainer_state.pt is missing" in message
    assert "step_000002: model.safetensors has" in message and "trainer.overwrite=true" in message


def test_a_corrupt_index_is_rebuilt_from_the_intact_folders(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    _save(mgr, 1, 0.5)
    _save(mgr, 2, 0.25)
    (tmp_path / "checkpoints" / "index.json").write_text('{"latest": "step_0')  # torn by a power cut
    assert mgr.resume_point().name == "step_000002"
    assert "index.json" in caplog.text
    index = mgr.index()
    assert (index["latest"], index["best"]) == ("step_000002", "step_000001")
    assert [(h["step"], h["val_accuracy"]) for h in index["history"]] == [(1, 0.5), (2, 0.25)]


def test_a_checkpoint_is_fsynced_before_the_rename_that_commits_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    mgr = CheckpointManager(tmp_path)
    final = mgr.save(1, save_model=_fake_model_saver(1, ("model.safetensors", "deepspeed/state/shard.pt")),
                     trainer_state={"step": 1}, val_accuracy=None)
    root, tmp = tmp_path / "checkpoints", tmp_path / "checkpoints" / ".tmp-step_000001"
    commit = events.index(("replace", str(tmp), str(final)))
    synced_before = {e[1] for e in events[:commit] if e[0] == "fsync"}
    files = {str(tmp / p.relative_to(final)) for p in final.rglob("*")}  # every file and sub-folder
    assert files | {str(tmp)} <= synced_before, sorted(files - synced_before)
    assert ("fsync", str(root)) in events[commit:]  # the rename itself is made durable
    index_commit = events.index(("replace", str(root / "index.json.tmp"), str(root / "index.json")))
    assert ("fsync", str(root / "index.json.tmp")) in events[:index_commit]


# ------------------------------------------------------------------------------- 6: torn metrics lines --


def test_a_torn_last_metrics_line_is_dropped_with_a_notice(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "r": 1}\n{"step": 2, "r": 2}\n{"step": 3, "r"')
    MetricsWriter(tmp_path, tensorboard=False).truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert f"{path}: line 3" in caplog.text


def test_a_corrupt_metrics_line_elsewhere_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    original = '{"step": 1}\n{"step": 2, "r\n{"step": 3}\n'
    path.write_text(original)
    with pytest.raises(ValueError, match=rf"{path}: line 2: not valid JSON"):
        MetricsWriter(tmp_path, tensorboard=False).truncate_after(3)
    assert path.read_text() == original  # left as it was for the user to look at


def test_metrics_rows_are_on_disk_when_write_returns(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    MetricsWriter(tmp_path, tensorboard=False).write(1, {"a": 1.0})
    assert synced == [str(tmp_path / "metrics.jsonl")]


# ------------------------------------------------------------------------------------ 7: disk full -------


def test_disk_full_during_a_save_names_the_folder_and_removes_the_partial_one(tmp_path):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 1)

    def write_half_then_fail(folder):
        (folder / "model-00001.safetensors").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as err:
        mgr.save(2, save_model=write_half_then_fail, trainer_state={}, val_accuracy=None)
    assert err.value.errno == errno.ENOSPC
    assert "No space left on device" in str(err.value) and str(tmp_path / "checkpoints") in str(err.value)
    assert "step_000002" in str(err.value) and "step_000001" in str(err.value)  # what failed, what is intact
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["index.json", "step_000001"]
    assert mgr.resume_point().name == "step_000001"


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped where it is not allowed)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: a failed writer may still hold a file


@pytest.mark.parametrize("writer", ["torch.save", "safetensors", "deepspeed-like shard"])
def test_disk_full_on_a_real_tiny_filesystem(tiny_filesystem, writer):
    """The real writers on a full disk: torch.save to a path fails in C++ ("unexpected pos ...", no errno),
    safetensors with its own error type; both must come out as ENOSPC naming the folder."""
    from safetensors.torch import save_file

    big = torch.zeros(1024 * 1024)  # 4 MiB: more than the whole filesystem
    mgr = CheckpointManager(tiny_filesystem)
    _save(mgr, 1)
    model = _fake_model_saver(2)
    state: dict = {"step": 2}
    shards = None
    if writer == "torch.save":
        state["big"] = big
    elif writer == "safetensors":
        model = lambda folder: save_file({"w": big}, str(folder / "model.safetensors"))  # noqa: E731
    else:
        shards = lambda folder: torch.save({"w": big}, str(folder / "shard.pt"))  # noqa: E731
    with pytest.raises(OSError) as err:
        mgr.save(2, save_model=model, trainer_state=state, val_accuracy=None, save_shards=shards)
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert str(tiny_filesystem / "checkpoints") in str(err.value)
    assert not list((tiny_filesystem / "checkpoints").glob(".tmp-*"))
    assert mgr.resume_point().name == "step_000001"


# ----------------------------------------------------------------------------------- 13: locks ----------

HOLD_LOCK = ("import sys, time\nfrom mhpo_vl.runs.run_dir import DirectoryLock\n"
             "lock = DirectoryLock(sys.argv[1], 'test holder').acquire()\n"
             "print('locked', flush=True)\ntime.sleep(600)\n")


@pytest.fixture
def lock_holder(tmp_path):
    """(folder, process): another process holding the lock of `folder`."""
    folder = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], env=CHILD_ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_process_is_refused_with_the_holders_pid(lock_holder):
    from mhpo_vl.runs.run_dir import DirectoryLock, RunDirError

    folder, proc = lock_holder
    with pytest.raises(RunDirError, match=rf"in use by pid {proc.pid} on host \S+ \(test holder"):
        DirectoryLock(folder, "training run").acquire()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_notice(lock_holder, caplog):
    from mhpo_vl.runs.run_dir import DirectoryLock

    folder, proc = lock_holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = DirectoryLock(folder, "training run").acquire()
    try:
        assert f"pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
        assert json.loads((folder / "mhpo-vl.lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (folder / "mhpo-vl.lock").exists()


def test_a_stale_lock_file_naming_a_dead_pid_is_taken_over(tmp_path, caplog):
    from mhpo_vl.runs.run_dir import DirectoryLock

    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp_path.joinpath("mhpo-vl.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with DirectoryLock(tmp_path, "evaluation"):
        assert f"pid {dead.pid}" in caplog.text


def test_a_lock_file_from_another_host_is_never_taken_over(tmp_path):
    from mhpo_vl.runs.run_dir import DirectoryLock, RunDirError

    tmp_path.joinpath("mhpo-vl.lock").write_text(json.dumps({"pid": 1, "host": "another-node"}))
    with pytest.raises(RunDirError, match="pid 1 on host another-node .*delete the lock file") as first:
        DirectoryLock(tmp_path, "training run").acquire()  # `first` keeps the failed call's frame (and files) alive
    # The refused attempt let go of the flock: a second one is refused for the same reason, not as "in use".
    with pytest.raises(RunDirError, match="cannot be checked from this host"):
        DirectoryLock(tmp_path, "training run").acquire()
    assert json.loads(tmp_path.joinpath("mhpo-vl.lock").read_text())["host"] == "another-node"
    del first


def test_train_refuses_a_run_directory_another_process_holds(lock_holder, tiny_vl_model_dir):
    from mhpo_vl.runs.run_dir import RunDirError
    from mhpo_vl.train import build_trainer

    folder, proc = lock_holder
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, folder, **{"rollout.backend": "hf"}))
    with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
        build_trainer(cfg)
    assert not (folder / "config.yaml").exists()


def test_eval_refuses_an_output_directory_another_process_holds(lock_holder, tiny_vl_model_dir, capsys):
    from mhpo_vl.cli import main

    folder, proc = lock_holder
    rc = main(["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "geometry3k", "--output-dir", str(folder)])
    assert rc == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err


# -------------------------------------------- 8, 9, 5, 6 and wall time: real runs, killed and damaged ---


def _train_overrides(model_dir: Path, out: Path) -> list[str]:
    return small_overrides(model_dir, out, **{
        "rollout.backend": "hf", "trainer.total_steps": "4", "trainer.save_every": "3", "trainer.val_every": "2",
        "trainer.keep_last": "2"})


def _kill_after_metrics_row(command: list[str], metrics: Path, step: int, timeout: int = 600) -> None:
    """Start `command`, SIGKILL it (and its children) once metrics.jsonl holds the row of `step`."""
    kill_when(command, lambda: metrics.exists() and f'{{"step": {step}, "reward/mean"' in metrics.read_text(),
              what=f"step {step}'s metrics row could be killed", timeout=timeout, env=CHILD_ENV, poll_s=0.1)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def killed_before_first_checkpoint_then_rerun(tmp_path_factory, tiny_vl_model_dir):
    """A run (4 steps; checkpoints at 3 and 4; validation at 2 and 4) killed -9 after step 1, before its first
    checkpoint, then rerun with the same command. Returns (run dir, stderr of the rerun)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    command = [sys.executable, "-m", "mhpo_vl.cli", "train", "--config", str(config),
               *_train_overrides(tiny_vl_model_dir, out)]
    _kill_after_metrics_row(command, out / "metrics.jsonl", step=1)
    assert not (out / "checkpoints" / "index.json").exists()
    rerun = subprocess.run(command, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    return out, rerun.stderr


@pytest.mark.slow
def test_a_rerun_after_a_kill_before_the_first_checkpoint_starts_clean(killed_before_first_checkpoint_then_rerun):
    out, stderr = killed_before_first_checkpoint_then_rerun
    rows = _rows(out)
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2, 3, 4]  # each step once
    assert [r["step"] for r in rows if "reward/mean" not in r] == [0]  # the validation before training, once
    assert "no checkpoint" in stderr and "no longer running" in stderr  # the notices: start again; stale lock


@pytest.mark.slow
def test_checkpoints_are_credited_only_with_their_own_steps_validation(killed_before_first_checkpoint_then_rerun):
    out, _ = killed_before_first_checkpoint_then_rerun
    index = json.loads((out / "checkpoints" / "index.json").read_text())
    val_at_4 = next(r["val/accuracy"] for r in _rows(out) if r["step"] == 4 and "val/accuracy" in r)
    # step 3 was saved without a validation at step 3 (the one at step 2 is not its score)
    assert [(h["step"], h["val_accuracy"]) for h in index["history"]] == [(3, None), (4, val_at_4)]
    assert index["best"] == "step_000004"


@pytest.mark.slow
def test_a_damaged_checkpoint_and_a_torn_metrics_line_are_survived_and_wall_time_adds_up(
        killed_before_first_checkpoint_then_rerun, tmp_path, tiny_vl_model_dir):
    from mhpo_vl.train import build_trainer

    source, _ = killed_before_first_checkpoint_then_rerun
    out = tmp_path / "run"
    shutil.copytree(source, out)
    first_rows = _rows(out)
    _damage(out / "checkpoints" / "step_000004" / "model.safetensors", "truncate")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/mean": 0.')  # a power cut in the middle of a line
    step3_state = CheckpointManager.load_trainer_state(out / "checkpoints" / "step_000003")
    assert step3_state["wall_seconds"] > 0

    trainer = build_trainer(load_config(None, _train_overrides(tiny_vl_model_dir, out)))
    assert trainer.resumed_from.endswith("step_000003")  # fell back past the damaged step 4
    started = time.perf_counter()
    summary = trainer.fit()
    segment = time.perf_counter() - started
    rows = _rows(out)
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2, 3, 4]
    redone = next(r for r in rows if r["step"] == 4 and "reward/mean" in r)
    before = next(r for r in first_rows if r["step"] == 4 and "reward/mean" in r)
    assert redone["reward/mean"] == before["reward/mean"]  # step 4 again, from the step-3 state
    # The summary counts the segment up to the step-3 checkpoint (another process) and this one.
    assert summary["wall_seconds"] > segment
    assert summary["wall_seconds"] >= step3_state["wall_seconds"]
    assert (out / "checkpoints" / "damaged-step_000004").is_dir()
    assert CheckpointManager(out).resume_point().name == "step_000004"


# ------------------------------------------ issue 22: data binding, preemption, retention, grading counts ----
# Fast: the trainer built from the fakes of tests/test_trainer_fakes.py (a tiny in-process LM), with save_pretrained
# so that checkpoints are real folders.

def _fake_trainer(out: Path, *overrides: str, samples=None, reward_fn=None, sampler=None):
    from types import SimpleNamespace

    from test_trainer_fakes import FixedEncoder, FixedSampler, TinyLM, fixed_reward

    from mhpo_vl.train import build_trainer
    from mhpo_vl.types import Sample

    class SavableLM(TinyLM):
        def save_pretrained(self, folder, state_dict=None, safe_serialization=True):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in (state_dict or self.state_dict()).items()},
                      str(Path(folder) / "model.safetensors"))

    class Processor:
        def save_pretrained(self, folder):
            (Path(folder) / "processor.json").write_text("{}")

    cfg = load_config(None, [
        f"trainer.output_dir={out}", "trainer.device=cpu", "trainer.num_threads=1", "rollout.n=2",
        "trainer.rollout_batch_size=4", "trainer.minibatch_size=2", "trainer.micro_batch_size=2",
        "algorithm.loss=grpo", "optim.lr=0.05", "trainer.total_steps=3", "trainer.val_every=0",
        "trainer.save_every=10", *overrides])
    torch.manual_seed(0)
    if samples is None:
        samples = [Sample(id=str(i), source="fake", split="train", question=f"q{i}", answer="right") for i in range(8)]
    policy = SimpleNamespace(model=SavableLM(), processor=Processor(), tokenizer=SimpleNamespace(pad_token_id=0))
    return build_trainer(cfg, policy=policy, encoder=FixedEncoder(), datasets=(samples, samples[:2]),
                         reward_fn=reward_fn or fixed_reward, sampler=sampler or FixedSampler())


def _signal_at_step(sig, step):
    """A FixedSampler that sends this process `sig` while it generates for step `step` (1-based): mid-step."""
    from test_trainer_fakes import FixedSampler

    class Signalling(FixedSampler):
        calls = 0

        def generate(self, prompts, config):
            self.calls += 1
            if self.calls == step:
                os.kill(os.getpid(), sig)
            return super().generate(prompts, config)

    return Signalling()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_mid_step_finishes_the_step_saves_it_and_the_rerun_loses_nothing(tmp_path, sig):
    """Item 7: the signal arrives while step 2 generates; step 2 completes, is checkpointed (save_every=10 would not
    have saved before step 3), fit raises Preempted; the rerun resumes from step 2 and runs only step 3."""
    from mhpo_vl.runs.preemption import Preempted

    trainer = _fake_trainer(tmp_path, "trainer.val_before_train=false", sampler=_signal_at_step(sig, 2))
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert stopped.value.signal_name == sig.name and stopped.value.step == 2
    assert CheckpointManager(tmp_path).latest().name == "step_000002"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert trainer.run_dir.lock is None  # closed: the rerun may take the directory
    assert signal.getsignal(sig) is signal.default_int_handler or signal.getsignal(sig) == signal.SIG_DFL
    rerun = _fake_trainer(tmp_path, "trainer.val_before_train=false")
    assert rerun.resumed_from.endswith("step_000002")
    rerun.fit()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_stop_signal_during_the_warm_start_saves_the_warm_started_weights(tmp_path, monkeypatch):
    """Item 7 (warm-start): the warm-started weights become checkpoint step 0 when the warm-start ends; a SIGTERM
    during it stops the run there, and the rerun resumes from step 0 without warming up again. Item 10: with
    trainer.val_before_train=false no validation runs before the warm-start either."""
    import mhpo_vl.train.warmstart as warmstart
    from mhpo_vl.runs.preemption import Preempted

    warm_starts = []

    def fake_warmstart(model, *args, **kwargs):
        warm_starts.append(1)
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)  # what the rerun must get back from the checkpoint
        os.kill(os.getpid(), signal.SIGTERM)
        return {"warmstart_steps": 5, "warmstart_final_loss": 0.5, "warmstart_seconds": 1.0}

    monkeypatch.setattr(warmstart, "run_warmstart", fake_warmstart)
    overrides = ("warmstart.steps=5", "trainer.val_before_train=false", "trainer.val_every=1")
    trainer = _fake_trainer(tmp_path, *overrides)
    validations = []
    real_validate = trainer.validate
    monkeypatch.setattr(trainer, "validate", lambda: validations.append(1) or real_validate())
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert stopped.value.step == 0 and validations == []  # val_before_train=false: none before the warm-start
    assert CheckpointManager(tmp_path).latest().name == "step_000000"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoints" / "step_000000" / "model.safetensors"))
    torch.testing.assert_close(saved["lm_head.weight"], trainer.rt.unwrapped().lm_head.weight.detach())
    rerun = _fake_trainer(tmp_path, *overrides)
    assert rerun.resumed_from.endswith("step_000000")
    summary = rerun.fit()
    assert warm_starts == [1] and summary["warmstart_steps"] == 5  # not warmed up again; its results kept


def test_a_damaged_latest_checkpoint_always_has_an_intact_one_behind_it(tmp_path):
    """Item 10: the best checkpoint is the latest (a single copy under the old keep_last=1 default): the previous
    one is kept too, so truncating the latest's weights resumes from the one before."""
    from mhpo_vl.config import TrainerConfig

    assert TrainerConfig().keep_last == 2
    mgr = CheckpointManager(tmp_path, keep_last=1)  # even at 1
    for step, acc in [(2, 0.2), (4, 0.5)]:
        _save(mgr, step, acc)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000004"]
    _damage(tmp_path / "checkpoints" / "step_000004" / "model.safetensors", "truncate")
    assert mgr.resume_point().name == "step_000002"


def test_a_null_image_cell_says_the_cell_is_null_naming_row_and_column():
    """Item 10: a column that exists with a null in this row is not a missing column."""
    from mhpo_vl.datasets.base import Record, get_field
    from mhpo_vl.images import DataError

    with pytest.raises(DataError) as err:
        get_field(Record({"question": "q", "image": None}, "train.jsonl", 7), "image")
    assert str(err.value) == ("train.jsonl: row 7: field 'image': the cell is null (the column is present; this row "
                              "has no value in it)")
    with pytest.raises(DataError, match="missing column"):
        get_field(Record({"question": "q"}, "train.jsonl", 7), "image")


def test_grading_timeouts_and_errors_reach_metrics_every_step(tmp_path):
    """Item 5 (metrics): RewardOutput.metrics() counts timeouts and grading errors; the trainer logs them each step
    (summed over the step's reward calls and the ranks). A user's reward without metrics() still trains."""
    from mhpo_vl.grading.grader import Verdict
    from mhpo_vl.grading.reward import RewardOutput

    def reward(samples, texts, truncated=None):
        verdicts = [Verdict(correct=t == "right", prediction=None, format_ok=True) for t in texts]
        verdicts[0] = Verdict(False, None, False, timed_out=True, error="timeout")
        verdicts[1] = Verdict(False, None, False, error="worker died")
        return RewardOutput([float(v.correct) for v in verdicts], verdicts)

    trainer = _fake_trainer(tmp_path / "a", "trainer.total_steps=2", "trainer.save_every=0", reward_fn=reward)
    trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "a") if "reward/mean" in r]
    assert [(r["step"], r["reward/timeouts"], r["reward/grading_errors"]) for r in rows] == [(1, 1.0, 1.0),
                                                                                              (2, 1.0, 1.0)]
    plain = _fake_trainer(tmp_path / "b", "trainer.total_steps=1", "trainer.save_every=0")  # SimpleNamespace result
    plain.fit()
    assert "reward/timeouts" not in read_metrics(tmp_path / "b")[-1]


def _samples(n: int, answer: str = "right"):
    from mhpo_vl.types import Sample

    return [Sample(id=str(i), source="fake", split="train", question=f"q{i}", answer=answer) for i in range(n)]


@pytest.mark.parametrize("change", ["rows", "content"])
def test_a_resume_on_changed_data_is_refused_naming_the_dataset(tmp_path, change):
    """Item 2: a checkpointed run, its training rows then changed (one fewer / one answer edited): the resume is
    refused naming data.train and what changed, touching nothing; with allow_config_change it resumes, recorded."""
    from mhpo_vl.runs.run_dir import RunDirError

    first = _fake_trainer(tmp_path, samples=_samples(8))
    first.save_checkpoint(None)
    first.close()
    changed = _samples(7) if change == "rows" else _samples(8)
    if change == "content":
        changed[5].answer = "other"
    before = _run_files(tmp_path)
    with pytest.raises(RunDirError) as err:
        _fake_trainer(tmp_path, samples=changed)
    expected = "data.train: 8 rows -> 7 rows" if change == "rows" else "data.train: other content in the same 8 rows"
    assert expected in str(err.value) and "trainer.allow_config_change=true" in str(err.value)
    assert "data.val" not in str(err.value)
    assert _run_files(tmp_path) == before
    allowed = _fake_trainer(tmp_path, "trainer.allow_config_change=true", samples=changed)
    allowed.close()
    assert allowed.resumed_from.endswith("step_000000")
    record = json.loads((tmp_path / "config_changes.jsonl").read_text().splitlines()[-1])
    assert record["data_changes"][0].startswith(expected) and record["resumed_from"] == "step_000000"
    again = _fake_trainer(tmp_path, samples=changed)  # now bound to the changed data
    again.close()


@pytest.mark.parametrize("flags", [[], ["trainer.allow_config_change=true"], ["trainer.overwrite=true"]])
def test_a_folder_of_another_tool_is_refused_and_never_cleaned(tmp_path, flags):
    """Item 10 / 3: config.yaml and checkpoints/ written by another tool (no mhpo-vl marker) are not a run: refused
    whatever the flags, every file left as it was (allow_config_change used to delete checkpoints/, tensorboard/)."""
    from mhpo_vl.runs.run_dir import RunDirError

    (tmp_path / "config.yaml").write_text("trainer:\n  max_epochs: 3\nmodel:\n  class_path: my.Model\n"
                                          "seed_everything: 1\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch=1.ckpt").write_bytes(b"weights")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    before = _run_files(tmp_path)
    with pytest.raises(RunDirError, match="mhpo-vl-run.json.*not made by mhpo-vl train"):
        _fake_trainer(tmp_path, *flags)
    assert _run_files(tmp_path) == before
