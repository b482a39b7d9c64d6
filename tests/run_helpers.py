"""Shared by the end-to-end run tests: small training overrides, metrics reading, and kill-then-resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
RUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def small_overrides(model_dir, out_dir, **extra):
    base = {
        "model.name_or_path": str(model_dir), "model.dtype": "float32", "model.gradient_checkpointing": "false",
        "data.train": "{name: geosynth, split: train, options: {n: 64, seed: 0, difficulty: 0}}",
        "data.val": "{name: geosynth, split: val, options: {n: 8, seed: 0, difficulty: 0}}",
        "data.template": "direct_boxed", "data.max_prompt_length": "256",
        "data.min_pixels": "null", "data.max_pixels": "null",
        "rollout.n": "4", "rollout.max_tokens": "6", "rollout.top_p": "1.0", "rollout.val_n": "2",
        "rollout.val_temperature": "1.0",
        "reward.require_think": "false", "reward.num_workers": "1",
        "optim.lr": "1e-3", "trainer.rollout_batch_size": "4", "trainer.minibatch_size": "2",
        "trainer.micro_batch_size": "4", "trainer.total_steps": "4", "trainer.val_every": "2",
        "trainer.save_every": "2", "trainer.device": "cpu", "trainer.num_threads": "1",
        "trainer.output_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_ok(command: list[str], timeout: int = 900) -> None:
    done = subprocess.run(command, cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]


def kill_when(command: list[str], ready, *, what: str, timeout: int = 600, env: dict | None = None,
              poll_s: float = 0.2) -> None:
    """Start `command`, wait until `ready()` is true, then SIGKILL it and all its processes (torchrun starts each
    rank in a session of its own: the launcher and every descendant are killed at once)."""
    proc = subprocess.Popen(command, cwd=REPO, env=env or RUN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(poll_s)
    assert proc.poll() is None, f"the run finished (rc={proc.returncode}) before {what}"
    launcher = psutil.Process(proc.pid)
    for p in [launcher, *launcher.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    proc.wait()


def kill_after_checkpoint(command: list[str], run_dir: Path, step: int, timeout: int = 600) -> None:
    """Start `command`, wait until index.json names checkpoint `step`, then SIGKILL it and all its processes."""
    index = run_dir / "checkpoints" / "index.json"
    kill_when(command, lambda: index.exists() and json.loads(index.read_text()).get("latest") == f"step_{step:06d}",
              what=f"checkpoint step {step} could be killed", timeout=timeout)


def assert_resumed_run_matches(uninterrupted: Path, resumed: Path, *, resumed_from_step: int, steps: int) -> None:
    """The resumed run's metrics equal the uninterrupted run's: sampled rewards exactly, losses to float error."""
    rows_a = [r for r in read_metrics(uninterrupted) if "reward/mean" in r]
    rows_b = [r for r in read_metrics(resumed) if "reward/mean" in r]
    assert [r["step"] for r in rows_b] == list(range(1, steps + 1))
    # vLLM's logprobs of its own samples equal the trainer's (float32): each weight sync, also after the resume,
    # put the trainer's weights into the engine (a skipped sync shows up as differences of ~1).
    for r in rows_a + rows_b:
        assert r["rollout/logprob_diff_max"] < 1e-4, (r["step"], r["rollout/logprob_diff_max"])
    # Only real updates after the resume point can show a lost optimizer state (zero gradients leave Adam inert).
    assert any(r["grad_norm"] > 1e-4 for r in rows_a if r["step"] > resumed_from_step), rows_a
    for ra, rb in zip(rows_a, rows_b):
        for key in ("reward/mean", "reward/accuracy", "response/length_mean", "groups/zero_variance", "optim/lr"):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
        for key in ("loss/total", "grad_norm", "response/entropy", "loss/ratio_max"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7), (ra["step"], key)
    summary_a = json.loads((uninterrupted / "summary.json").read_text())
    summary_b = json.loads((resumed / "summary.json").read_text())
    assert summary_b["resumed_from"].endswith(f"step_{resumed_from_step:06d}")
    assert summary_a["val_history"] == summary_b["val_history"]


WARM_START_STEPS = 60


def build_warm_model(base_model_dir: Path, folder: Path) -> None:
    """Save into `folder` (a HF folder) `base_model_dir` after a short supervised warm-start on geosynth answers.

    The random tiny model never writes a `\\boxed{}` answer, so every RL group has equal rewards and every update
    is exactly zero: a resume test on it cannot tell whether the optimizer state came back. After this warm-start
    it writes boxed numbers and is sometimes right, so groups differ and updates are real."""
    import tempfile

    from mhpo_vl.config import load_config
    from mhpo_vl.train import build_trainer
    from mhpo_vl.train.warmstart import run_warmstart

    with tempfile.TemporaryDirectory() as run_dir:
        overrides = small_overrides(base_model_dir, run_dir, **{
            "rollout.backend": "hf", "warmstart.steps": str(WARM_START_STEPS), "warmstart.lr": "2e-3",
            "warmstart.batch_size": "32", "warmstart.response_template": "\\boxed{{{answer}}}",
            "data.train": "{name: geosynth, split: train, options: {n: 512, seed: 0, difficulty: 0}}"})
        trainer = build_trainer(load_config(None, overrides))
        run_warmstart(trainer.rt.unwrapped(), trainer.policy.tokenizer, trainer.encoder, trainer.train_samples,
                      trainer.cfg.warmstart, device=trainer.rt.device, seed=trainer.cfg.trainer.seed,
                      chunk_size=trainer.cfg.trainer.logprob_chunk_size)
        trainer.rt.unwrapped().save_pretrained(folder, safe_serialization=True)
        trainer.policy.processor.save_pretrained(folder)
        trainer.close()
