"""`mhpo-vl study`: the plan (loss variants, settings, per-run overrides), the runner (skip / resume / start over /
diverged / Ctrl-C) with a stand-in launcher, and the aggregation on hand-made run folders with hand-computed numbers.
The end-to-end study with the real trainer is the slow test at the bottom."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mhpo_vl.config import save_config
from mhpo_vl.losses.mhpo import on_policy_factor
from mhpo_vl.study.aggregate import sign_test_p, spike_steps
from mhpo_vl.study.plan import Plan, StudyError, load_plan, make_plan, parse_losses
from mhpo_vl.study.report import build_report
from mhpo_vl.study.runner import StudyInterrupted, launch_subprocess, run_study

BASE_YAML = """
algorithm: {loss: mhpo, loss_params: {c: 1.0}}
optim: {lr: 1.0e-3, max_grad_norm: 1.0}
trainer: {rollout_batch_size: 8, minibatch_size: 4, total_steps: 10}
"""


@pytest.fixture
def base_config(tmp_path) -> str:
    path = tmp_path / "base.yaml"
    path.write_text(BASE_YAML)
    return str(path)


# ------------------------------------------------------------------------------------------------- the plan ----


def test_loss_variants_and_their_scales():
    variants = parse_losses("mhpo, grpo,grpo_x0.5,grpo_xmhpo")
    assert [(v.label, v.loss, v.scale) for v in variants] == [
        ("mhpo", "mhpo", 1.0), ("grpo", "grpo", 1.0), ("grpo_x0.5", "grpo", 0.5), ("grpo_xmhpo", "grpo", on_policy_factor())]
    assert variants[3].overrides() == ["algorithm.loss=grpo", f"algorithm.loss_params={{scale: {on_policy_factor()!r}}}"]
    assert variants[0].overrides() == ["algorithm.loss=mhpo", "algorithm.loss_params={}"]
    for bad, message in (("ppo", "unknown loss 'ppo'"), ("grpo_x0", "must be a number > 0"),
                         ("grpo_xabc", "must be a number > 0"), ("grpo_x-1", "must be a number > 0"),
                         ("grpo,mhpo,grpo", "listed twice: grpo")):
        with pytest.raises(StudyError, match=message):
            parse_losses(bad)


def test_table3_mhpo_variants_are_study_losses(base_config, tmp_path):
    from mhpo_vl.losses import build_loss

    variants = parse_losses("mhpo_lfm,mhpo_sym,mhpo_sym_x0.5")
    assert [(v.label, v.loss, v.scale) for v in variants] == [
        ("mhpo_lfm", "mhpo_lfm", 1.0), ("mhpo_sym", "mhpo_sym", 1.0), ("mhpo_sym_x0.5", "mhpo_sym", 0.5)]
    plan = make_plan(base_config, "mhpo_lfm,mhpo_sym", "1", "demo", tmp_path / "s", [])
    built = {}
    for run in plan.runs():
        cfg = plan.run_config(run)
        assert cfg.algorithm.loss == run.variant.loss and cfg.algorithm.loss_params == {}  # base's {c: 1.0} replaced
        built[run.variant.label] = build_loss(cfg.algorithm.loss, **cfg.algorithm.loss_kwargs()).params
    assert built == {"mhpo_lfm": {"c": 1.5}, "mhpo_sym": {"c": 1.5, "k": 3.0, "lam": 0.8}}  # Table 3's settings


def test_under_adamw_a_scaled_loss_is_the_unscaled_loss_with_a_looser_clip():
    """What the grpo_xmhpo control controls for (docs/study.md, "The control"): with the trainer's optimiser (AdamW)
    and clipping (Runtime.step), s x L clipped at g takes the same updates as L clipped at g / s, and not those of
    L clipped at g. Gradients are sized so the clip acts on some steps and not on others."""
    import torch

    from mhpo_vl.distributed import Runtime

    s, g = on_policy_factor(), 1.0

    def train(loss_scale: float, max_grad_norm: float) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        runtime = Runtime(device="cpu", max_grad_norm=max_grad_norm)
        model, _ = runtime.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2))
        data = torch.Generator().manual_seed(1)
        norms = []
        for step in range(12):
            x = torch.randn(16, 8, generator=data) * (1 + 2 * (step % 3))  # gradient norms from 0.4 to 19
            runtime.backward(loss_scale * model(x).square().mean(), last_micro=True)
            norms.append(runtime.step()[0] / loss_scale)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), norms

    scaled, norms = train(s, g)
    looser_clip, _ = train(1.0, g / s)
    same_clip, _ = train(1.0, g)
    assert min(norms) < g / s < max(norms)  # the clip at g / s acts on some steps, not all
    assert torch.allclose(scaled, looser_clip, atol=1e-6, rtol=0)
    assert (scaled - same_clip).abs().max() > 1e-3


def test_settings_and_per_run_configs(base_config, tmp_path):
    plan = make_plan(base_config, "mhpo,grpo_x0.25", "3,7", "demo,stress", tmp_path / "s", ["optim.max_grad_norm=2.0"])
    assert plan.settings == {"demo": [], "stress": ["trainer.ppo_epochs=4", "trainer.minibatch_size=2",
                                                    "optim.lr=0.002", "trainer.total_steps=5"]}
    runs = plan.runs()
    assert [r.name for r in runs] == ["demo/mhpo/seed3", "demo/mhpo/seed7", "demo/grpo_x0.25/seed3",
                                      "demo/grpo_x0.25/seed7", "stress/mhpo/seed3", "stress/mhpo/seed7",
                                      "stress/grpo_x0.25/seed3", "stress/grpo_x0.25/seed7"]
    assert runs[3].dir == tmp_path / "s" / "demo" / "grpo_x0.25" / "seed7"
    cfg = plan.run_config(runs[7])  # stress, grpo x 0.25, seed 7
    assert (cfg.algorithm.loss, cfg.algorithm.loss_params) == ("grpo", {"scale": 0.25})  # base's {c: 1.0} replaced
    assert (cfg.trainer.seed, cfg.data.seed, cfg.trainer.ppo_epochs, cfg.trainer.minibatch_size) == (7, 7, 4, 2)
    assert (cfg.optim.lr, cfg.optim.max_grad_norm, cfg.trainer.total_steps) == (0.002, 2.0, 5)
    demo = plan.run_config(runs[0])
    assert (demo.algorithm.loss_params, demo.trainer.ppo_epochs, demo.trainer.total_steps, demo.optim.lr) == ({}, 1, 10, 1e-3)
    plan.save()
    again = load_plan(tmp_path / "s")
    assert again.runs() == runs and again.settings == plan.settings and again.user_overrides == plan.user_overrides


def test_the_long_setting_is_near_on_policy_on_a_harder_task_for_4x_the_steps(base_config, tmp_path):
    geo = tmp_path / "geo.yaml"
    geo.write_text(BASE_YAML + "data:\n  train: {name: geosynth, split: train, options: {n: 64, seed: 0, difficulty: 0}}\n"
                   "  val: {name: geosynth, split: val, options: {n: 16, seed: 1, difficulty: 0}}\n")
    plan = make_plan(str(geo), "grpo", "2", "demo,long", tmp_path / "s", [])
    long_cfg, demo_cfg = plan.run_config(plan.runs()[1]), plan.run_config(plan.runs()[0])
    assert (long_cfg.data.train.options, long_cfg.data.val.options) == (
        {"n": 64, "seed": 0, "difficulty": 1}, {"n": 16, "seed": 1, "difficulty": 1})
    assert (long_cfg.rollout.max_tokens, long_cfg.trainer.val_every, long_cfg.trainer.total_steps) == (24, 10, 40)
    # near on-policy: the demo's epochs, minibatches and learning rate
    assert (long_cfg.trainer.ppo_epochs, long_cfg.trainer.minibatch_size, long_cfg.optim.lr) == (
        demo_cfg.trainer.ppo_epochs, demo_cfg.trainer.minibatch_size, demo_cfg.optim.lr)
    with pytest.raises(StudyError, match="long setting: data.train must be geosynth"):
        make_plan(base_config, "grpo", "1", "long", tmp_path / "t", [])  # the defaults' geometry3k


def test_the_reuse_settings_take_n_optimiser_steps_per_batch_at_the_demo_lr(base_config, tmp_path):
    plan = make_plan(base_config, "grpo", "1", "demo,reuse2,reuse4,reuse8,reuse16", tmp_path / "s", [])
    demo, *reuse = [plan.run_config(run) for run in plan.runs()]
    per_batch = [c.trainer.ppo_epochs * (c.trainer.rollout_batch_size // c.trainer.minibatch_size) for c in reuse]
    assert per_batch == [2, 4, 8, 16]
    assert demo.trainer.ppo_epochs * (demo.trainer.rollout_batch_size // demo.trainer.minibatch_size) == 2
    for c in reuse:  # only the reuse changes: the demo's lr and data, half its RL steps, validation every 10
        assert (c.optim.lr, c.data.train, c.rollout.max_tokens) == (demo.optim.lr, demo.data.train, demo.rollout.max_tokens)
        assert (c.trainer.total_steps, c.trainer.val_every) == (round(demo.trainer.total_steps / 2), 10)
    with pytest.raises(StudyError, match="reuse16 setting: trainer.rollout_batch_size=6 must be a multiple of 4"):
        make_plan(base_config, "mhpo", "1", "reuse16", tmp_path, ["trainer.rollout_batch_size=6", "trainer.minibatch_size=2"])


def test_plan_errors_name_what_is_wrong(base_config, tmp_path):
    with pytest.raises(StudyError, match="trainer.seed=5: the study sets"):
        make_plan(base_config, "mhpo", "1", "demo", tmp_path, ["trainer.seed=5"])
    with pytest.raises(StudyError, match="rollout_batch_size=6 must be a multiple of 4"):
        make_plan(base_config, "mhpo", "1", "stress", tmp_path, ["trainer.rollout_batch_size=6", "trainer.minibatch_size=2"])
    with pytest.raises(StudyError, match="unknown setting.*huge; valid: demo, stress, long, reuse2, reuse4, reuse8, reuse16"):
        make_plan(base_config, "mhpo", "1", "demo,huge", tmp_path, [])
    with pytest.raises(StudyError, match="--seeds must be comma-separated integers"):
        make_plan(base_config, "mhpo", "1,x", "demo", tmp_path, [])
    with pytest.raises(StudyError, match="unknown config key.*optim.lrr"):
        make_plan(base_config, "mhpo", "1", "demo", tmp_path, ["optim.lrr=1"])
    with pytest.raises(StudyError, match="trainer.resume is false"):
        make_plan(base_config, "mhpo", "1", "demo", tmp_path, ["trainer.resume=false"])
    with pytest.raises(StudyError, match="is not a study folder"):
        load_plan(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ the runner ----


class FakeLaunch:
    """Stands in for `mhpo-vl train`: records each command and what the run folder held when it started, then
    writes summary.json (exit 0), or exits 3 (diverged) / 1 for the runs named so."""

    def __init__(self, plan: Plan, diverge=(), fail=()):
        self.plan, self.diverge, self.fail, self.calls = plan, set(diverge), set(fail), []

    def __call__(self, command, log_path):
        run = next(r for r in self.plan.runs() if str(r.dir) == command[command.index("--output-dir") + 1])
        self.calls.append((run.name, command, (run.dir / "metrics.jsonl").exists()))
        log_path.write_text("some output\nTrainingDivergedError: 3 updates in a row\n")
        save_config(self.plan.run_config(run), run.dir / "config.yaml")
        if run.name in self.diverge:
            return 3
        if run.name in self.fail:
            return 1
        (run.dir / "summary.json").write_text(json.dumps({"val_accuracy_initial": 0.1, "val_accuracy_final": 0.2,
                                                          "val_accuracy_best": 0.3}))
        return 0


def test_runner_skips_done_resumes_partial_starts_over_new_and_records_divergence(base_config, tmp_path):
    plan = make_plan(base_config, "mhpo,grpo", "1,2,3", "demo", tmp_path / "s", [])
    done, partial, stale, diverging, failing, fresh = plan.runs()
    for run in (done, partial, stale):
        run.dir.mkdir(parents=True)
        save_config(plan.run_config(run), run.dir / "config.yaml")
        (run.dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (done.dir / "summary.json").write_text("{}")
    (partial.dir / "checkpoints").mkdir()
    (partial.dir / "checkpoints" / "index.json").write_text('{"latest": "step_000002"}')
    lines = []
    launch = FakeLaunch(plan, diverge={diverging.name}, fail={failing.name})
    result = run_study(plan, launch=launch, log=lines.append)
    # The study deletes no file of a run: the partial run keeps its metrics (the trainer truncates them at its
    # checkpoint) and so does the stale one (the trainer, holding the run's lock, removes an attempt without a
    # checkpoint: tests/test_faults_run.py::test_a_rerun_after_a_kill_before_the_first_checkpoint_starts_clean).
    assert [(name, had_metrics) for name, _, had_metrics in launch.calls] == [
        (partial.name, True), (stale.name, True), (diverging.name, False), (failing.name, False), (fresh.name, False)]
    _, command, _ = launch.calls[2]
    assert command[:4] == [sys.executable, "-m", "mhpo_vl.cli", "train"]
    assert command[4:8] == ["--config", base_config, "--output-dir", str(diverging.dir)]
    assert command[-4:] == ["algorithm.loss=grpo", "algorithm.loss_params={}", "trainer.seed=1", "data.seed=1"]
    assert (result.ran, result.skipped, result.diverged, result.failed) == (
        [partial.name, stale.name, fresh.name], [done.name], [diverging.name], [failing.name])
    assert "TrainingDivergedError" in json.loads((diverging.dir / "diverged.json").read_text())["log_tail"]
    assert lines[0] == "[1/6] demo/mhpo/seed1: done, skipped"
    assert lines[1].startswith("[2/6] demo/mhpo/seed2: resuming (study elapsed 0:00:0")
    assert lines[3].startswith("[3/6] demo/mhpo/seed3: starting")
    assert any(line.startswith("[4/6] demo/grpo/seed1: DIVERGED") for line in lines)
    assert any(line.startswith("[5/6] demo/grpo/seed2: FAILED (exit 1)") for line in lines)
    assert json.loads((tmp_path / "s" / "study.json").read_text())["seeds"] == [1, 2, 3]
    # Rerun: only the failed run is tried again; a diverged run is a result and stays.
    again = FakeLaunch(plan)
    run_study(plan, launch=again, log=lines.append)
    assert [name for name, _, _ in again.calls] == [failing.name]


def test_runner_refuses_run_folders_made_with_another_config(base_config, tmp_path):
    plan = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", [])
    run_study(plan, launch=FakeLaunch(plan), log=lambda _: None)
    changed = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", ["optim.lr=5e-4"])
    with pytest.raises(StudyError, match=r"seed1: optim.lr: 0.001 in the run, 0.0005 now"):
        run_study(changed, launch=FakeLaunch(changed), log=lambda _: None)


@pytest.fixture
def ctrl_c_handler():
    """A shell starts background jobs with SIGINT ignored, and Python and its children keep that: install Python's
    Ctrl-C handler as a terminal session has it, so the Ctrl-C tests mean the same wherever the suite is launched."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_running_training_and_the_study(tmp_path, monkeypatch, ctrl_c_handler):
    # The child interrupts its parent (this test process) as Ctrl-C in a terminal would, then waits to be stopped:
    # it did not get the SIGINT itself, so after the grace period the runner sends it one.
    monkeypatch.setattr("mhpo_vl.study.runner.STOP_GRACE_S", 0.5)
    pid_file = tmp_path / "pid"
    child = (f"import os, signal, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(0.5); "
             "os.kill(os.getppid(), signal.SIGINT); time.sleep(60)")
    start = time.monotonic()
    with pytest.raises(StudyInterrupted):
        launch_subprocess([sys.executable, "-c", child], tmp_path / "console.log")
    assert time.monotonic() - start < 30  # the child got the SIGINT and stopped, not a 60 s wait
    with pytest.raises(ProcessLookupError):  # it is gone (and reaped), not left running
        os.kill(int(pid_file.read_text()), 0)
    assert "KeyboardInterrupt" in (tmp_path / "console.log").read_text()  # its output went to the log


def test_ctrl_c_in_a_terminal_reaches_both_and_the_study_returns_at_once(tmp_path, ctrl_c_handler):
    """A terminal's Ctrl-C goes to the whole foreground process group: the training stops by itself and the runner,
    waiting for it, returns as soon as it has stopped, without sending more signals."""
    from run_helpers import REPO, RUN_ENV

    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = ("import sys; from pathlib import Path; from mhpo_vl.study import runner\n"
              "from mhpo_vl.study.runner import StudyInterrupted, launch_subprocess\n"
              "runner.STOP_GRACE_S = 300  # a runner that had to signal the child would take 5 minutes\n"
              "try:\n"
              f"    launch_subprocess([sys.executable, '-c', {child!r}], Path({str(tmp_path / 'console.log')!r}))\n"
              "except StudyInterrupted:\n"
              "    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, env=RUN_ENV, start_new_session=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to every process of the group
    assert proc.wait(timeout=120) == 130
    assert time.monotonic() - start < 120
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


# ------------------------------------------------------------------------------------------- the aggregation ----


def test_spike_rule():
    nan = math.nan
    norms = [0.1, 9.0, 0.1, 0.1, 0.1, 0.1, 0.5, 0.1, nan, 2.0] + [0.1] * 10 + [0.35]
    steps = list(range(1, len(norms) + 1))
    # step 2: only 1 step of history; step 7: 5x the median 0.1 but under the floor 1.0; step 9: NaN;
    # step 10: 2.0 > 3 x median(0.1, 9, 0.1, 0.1, 0.1, 0.1, 0.5, 0.1) = 0.3 and > 1.0; step 21: under the floor.
    assert spike_steps(steps, norms, floor=1.0) == [10]
    assert spike_steps(steps, norms, floor=0.3) == [7, 10, 21]
    # A jump from 0.1 to 1.0 is a spike until 1.0 is the median of the last 10 steps: at steps 11-15 at least 6 of
    # the previous 10 are 0.1 (median 0.1); at step 16 the median is (0.1 + 1) / 2 = 0.55. Only the previous 10 count:
    # at step 21 the median is 1.0, so 2.5 is no spike (over all 20 steps the median is 0.55 and it would be).
    jump = [0.1] * 10 + [1.0] * 10
    assert spike_steps(list(range(1, 22)), jump + [2.5], floor=0.3) == [11, 12, 13, 14, 15]
    assert spike_steps(list(range(1, 22)), jump + [3.5], floor=0.3) == [11, 12, 13, 14, 15, 21]


def write_run(run_dir: Path, plan: Plan, run, norms, rewards, entropy, accuracies=None, diverged=False, cpu=None,
              history=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(plan.run_config(run), run_dir / "config.yaml")
    rows = [{"step": 0, "val/accuracy": 0.0, "val/tag": "before_warmstart"},
            {"step": 0, "val/accuracy": accuracies[0] if accuracies else 0.2}]
    for i, (norm, reward) in enumerate(zip(norms, rewards), 1):
        rows.append({"step": i, "reward/mean": reward, "grad_norm_max": "nan" if math.isnan(norm) else norm,
                     "response/entropy": entropy, "updates/skipped_nonfinite": float(math.isnan(norm)),
                     **({"val/accuracy": 0.3} if i % 4 == 0 else {})})
        if run.variant.loss == "mhpo":  # only MHPO logs these
            rows[-1].update({"loss/survival_weight_mean": 0.26, "loss/grad_multiplier_mean": 0.25,
                             "loss/grad_multiplier_max": 0.4})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if accuracies:
        start, final, best = accuracies
        summary = {"val_accuracy_initial": start, "val_accuracy_final": final, "val_accuracy_best": best,
                   "wall_seconds": 12.0, **({"machine": {"cpu": cpu}} if cpu else {}),
                   **({"val_history": history} if history else {})}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if diverged:
        (run_dir / "diverged.json").write_text("{}")


def report_of_flat_runs(base_config: str, out: Path, losses: str, seeds: str, settings: str,
                        accuracies: dict[str, tuple[float, float, float]], *, partial: tuple[str, ...] | list[str] = (),
                        cpus: dict[str, str] | None = None) -> tuple[dict, str]:
    """A study whose runs are flat curves (norms, rewards 0.5) with the given (start, final, best) accuracies, plus
    ``partial`` runs (metrics, no summary); builds the report and returns summary.json (parsed) and summary.md."""
    plan = make_plan(base_config, losses, seeds, settings, out, [])
    plan.save()
    runs = {r.name: r for r in plan.runs()}
    flat = [0.5] * 8
    for name, acc in accuracies.items():
        write_run(runs[name].dir, plan, runs[name], flat, flat, 1.0, accuracies=acc, cpu=(cpus or {}).get(name))
    for name in partial:
        write_run(runs[name].dir, plan, runs[name], flat, flat, 1.0)
    build_report(load_plan(out))
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def test_summary_of_hand_made_runs(base_config, tmp_path):
    plan = make_plan(base_config, "mhpo,grpo", "1,2,3", "demo", tmp_path / "s", [])
    plan.save()
    runs = {r.name: r for r in plan.runs()}
    step = [0.1 * i for i in range(1, 9)]

    def put(name, norms, rewards, entropy, **kw):
        write_run(runs[name].dir, plan, runs[name], norms, rewards, entropy, **kw)

    # val_history: the last 20% of steps is step >= 8 of 10; the tagged (before warm-start) record is not RL's
    put("demo/mhpo/seed1", [0.5] * 8, step, 1.0, accuracies=(0.30, 0.50, 0.60), cpu="AMD EPYC", history=[
        {"step": 0, "accuracy": 0.0, "tag": "before_warmstart"}, {"step": 0, "accuracy": 0.30},
        {"step": 4, "accuracy": 0.55}, {"step": 8, "accuracy": 0.60}, {"step": 9, "accuracy": 0.45},
        {"step": 10, "accuracy": 0.50}])
    put("demo/mhpo/seed2", [0.5] * 7 + [0.9], [r + 0.1 for r in step], 0.8, accuracies=(0.40, 0.70, 0.70), history=[
        {"step": 0, "accuracy": 0.40}, {"step": 5, "accuracy": 0.65}, {"step": 7, "accuracy": 0.20},
        {"step": 10, "accuracy": 0.70}])
    put("demo/mhpo/seed3", [100.0] * 8, step, 9.0)  # partial (a checkpoint, no summary): left out of every number
    (runs["demo/mhpo/seed3"].dir / "checkpoints").mkdir()
    (runs["demo/mhpo/seed3"].dir / "checkpoints" / "index.json").write_text('{"latest": "step_000008"}')
    put("demo/grpo/seed1", [0.2] * 6 + [5.0, math.nan], step, 1.0, diverged=True)
    put("demo/grpo/seed2", [0.2] * 6 + [0.7, 3.0], step, 1.0, accuracies=(0.20, 0.10, 0.50))
    # demo/grpo/seed3 never started

    build_report(load_plan(tmp_path / "s"))
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    mhpo, grpo = summary["groups"]
    assert (mhpo["runs_done"], mhpo["runs_diverged"], mhpo["runs_planned"]) == (2, 0, 3)
    s = mhpo["stats"]
    assert s["val_accuracy_final"] == pytest.approx({"n": 2, "mean": 0.6, "std": 0.1414214, "min": 0.5, "max": 0.7})
    assert s["drop"] == pytest.approx({"n": 2, "mean": 0.05, "std": 0.0707107, "min": 0.0, "max": 0.1})
    assert s["late_min"] == pytest.approx({"n": 2, "mean": 0.575, "std": 0.1767767, "min": 0.45, "max": 0.70})
    assert s["val_accuracy_initial"]["mean"] == pytest.approx(0.35)
    assert s["final_reward"]["mean"] == pytest.approx(0.65)  # last 5 steps: 0.6 and 0.7
    assert s["final_entropy"]["mean"] == pytest.approx(0.9)
    assert s["max_grad_norm"] == pytest.approx({"n": 2, "mean": 0.7, "std": 0.2828427, "min": 0.5, "max": 0.9})
    assert s["spikes"]["mean"] == 0
    assert (grpo["runs_done"], grpo["runs_diverged"]) == (1, 1)
    g = grpo["stats"]
    assert g["val_accuracy_final"] == {"n": 1, "mean": 0.1, "std": None, "min": 0.1, "max": 0.1}
    assert g["drop"]["mean"] == pytest.approx(0.4)
    assert g["spikes"] == {"n": 2, "mean": 1.0, "std": 0.0, "min": 1, "max": 1}  # steps 7 and 8 of the two runs
    assert g["max_grad_norm"]["mean"] == pytest.approx(4.0) and g["skipped_updates"]["mean"] == pytest.approx(0.5)
    by_name = {f"{r['setting']}/{r['loss']}/seed{r['seed']}": r for r in summary["runs"]}
    assert by_name["demo/grpo/seed1"]["spike_steps"] == [7] and by_name["demo/grpo/seed2"]["spike_steps"] == [8]
    assert by_name["demo/grpo/seed3"] == {"setting": "demo", "loss": "grpo", "seed": 3,
                                          "dir": str(runs["demo/grpo/seed3"].dir), "status": "new"}

    md = (tmp_path / "s" / "summary.md").read_text()
    assert "| mhpo | 2 (0) / 3 | 0.350 ± 0.071 (min 0.300) | 0.600 ± 0.141 (min 0.500) |" in md
    assert "| 0.050 ± 0.071 (max 0.100) | 0.575 ± 0.177 (min 0.450) |" in md
    assert "| grpo | 1 (1) / 3 | 0.200 | 0.100 |" in md
    assert "above 3 x the median `grad_norm_max` of the run's previous 10 steps" in md
    assert "![demo](figures/demo.png)" in md
    # every run names its CPU (from summary.json's machine entry; "-" where an older summary lacks it)
    assert "| demo | mhpo | 1 | done | 8 | 0.300 | 0.500 | 0.600 | 0.100 | 0.450 | 0.500 | - | 12 | AMD EPYC |" in md
    assert "| demo | mhpo | 2 | done | 8 | 0.400 | 0.700 | 0.700 | 0.000 | 0.700 | 0.900 | - | 12 | - |" in md
    assert (tmp_path / "s" / "figures" / "demo.png").stat().st_size > 10_000


def test_the_reuse_boundary_reads_the_sweep_across_its_settings(base_config, tmp_path):
    """Per loss and optimiser steps per batch (reuse2 = 1 x 2, reuse8 = 4 x 2): seeds ending at or above their start,
    stats over seeds; a partial run and a setting outside the sweep are left out; the table and the figure."""
    summary, md = report_of_flat_runs(base_config, tmp_path / "s", "mhpo,grpo", "1,2", "reuse8,reuse2,demo", {
        "reuse2/mhpo/seed1": (0.40, 0.60, 0.60), "reuse2/mhpo/seed2": (0.50, 0.70, 0.75),
        "reuse8/mhpo/seed1": (0.40, 0.10, 0.45), "reuse8/mhpo/seed2": (0.50, 0.50, 0.55),
        "reuse2/grpo/seed1": (0.40, 0.55, 0.60), "reuse8/grpo/seed1": (0.40, 0.45, 0.50),
        "demo/grpo/seed1": (0.40, 0.00, 0.40)}, partial=["reuse8/grpo/seed2"])
    boundary = summary["reuse_boundary"]
    assert [(e["loss"], e["steps_per_batch"], e["setting"], e["seeds"], e["held"]) for e in boundary] == [
        ("mhpo", 2, "reuse2", [1, 2], 2), ("mhpo", 8, "reuse8", [1, 2], 1),  # seed 1: 0.40 -> 0.10; seed 2: 0.5 -> 0.5
        ("grpo", 2, "reuse2", [1], 1), ("grpo", 8, "reuse8", [1], 1)]
    mhpo8 = boundary[1]
    assert mhpo8["val_accuracy_final"] == pytest.approx({"n": 2, "mean": 0.3, "std": 0.2828427, "min": 0.1, "max": 0.5})
    assert mhpo8["drop"] == pytest.approx({"n": 2, "mean": 0.2, "std": 0.2121320, "min": 0.05, "max": 0.35})
    assert mhpo8["finals"] == [0.10, 0.50]
    assert "| mhpo | 8 (reuse8) | 1 of 2 | 0.450 ± 0.071 (min 0.400) | 0.300 ± 0.283 (min 0.100) |" in md
    assert "| grpo | 2 (reuse2) | 1 of 1 | 0.400 | 0.550 |" in md
    assert "![reuse boundary](figures/reuse_boundary.png)" in md
    assert (tmp_path / "s" / "figures" / "reuse_boundary.png").stat().st_size > 10_000


def test_paired_by_seed_compares_the_first_loss_with_each_other_only_from_the_same_warm_start(base_config, tmp_path):
    """mhpo - grpo per seed over seeds 1-3 (same start accuracy); seed 4 starts elsewhere (another float path's
    warm-start) and is listed as unpaired; seed 5 has only one run done. Hand-computed: finals +0.10, +0.10, 0.00 ->
    mean 0.0667, std 0.0577, t(2) = 4.303 -> +-0.1434; drops -0.10, -0.05, +0.05; the sign test drops ties."""
    summary, md = report_of_flat_runs(base_config, tmp_path / "s", "mhpo,grpo", "1,2,3,4,5", "demo", {
        "demo/mhpo/seed1": (0.30, 0.50, 0.60), "demo/grpo/seed1": (0.30, 0.40, 0.60),
        "demo/mhpo/seed2": (0.40, 0.70, 0.70), "demo/grpo/seed2": (0.40, 0.60, 0.65),
        "demo/mhpo/seed3": (0.50, 0.55, 0.60), "demo/grpo/seed3": (0.50, 0.55, 0.55),
        "demo/mhpo/seed4": (0.50, 0.90, 0.90), "demo/grpo/seed4": (0.45, 0.10, 0.40),
        "demo/mhpo/seed5": (0.50, 0.90, 0.90)}, cpus={"demo/mhpo/seed4": "Intel", "demo/grpo/seed4": "Intel"})
    (entry,) = summary["paired"]
    assert (entry["reference"], entry["other"], entry["seeds"]) == ("mhpo", "grpo", [1, 2, 3])
    assert entry["unpaired"] == [{"seed": 4, "starts": [0.5, 0.45], "cpus": ["Intel", "Intel"]}]
    final = entry["val_accuracy_final"]
    assert final["diffs"] == pytest.approx([0.10, 0.10, 0.0])
    assert (final["mean"], final["std"]) == pytest.approx((0.0666667, 0.0577350))
    assert final["ci95"] == pytest.approx([0.0666667 - 0.1434333, 0.0666667 + 0.1434333])
    assert (final["above"], final["below"], final["level"], final["sign_p"]) == (2, 0, 1, 0.5)  # 2 x (1/2)^2
    drop = entry["drop"]
    assert drop["diffs"] == pytest.approx([-0.10, -0.05, 0.05])
    assert (drop["above"], drop["below"], drop["sign_p"]) == (1, 2, 1.0)
    assert entry["late_min"]["n"] == 0  # no val_history in these summaries
    assert ("| demo | mhpo - grpo | final | 3 (1, 2, 3) | +0.100, +0.100, +0.000 | +0.067 ± 0.058 | [-0.077, +0.210] | "
            "2 / 0 / 1 | 0.5 |") in md
    assert "| demo | mhpo - grpo | min last 20% |" not in md
    assert "- demo, mhpo - grpo: seed 4 unpaired (starts 0.500 / 0.450; CPU Intel / Intel)" in md


def test_sign_test():
    assert sign_test_p(5, 0) == 0.0625 and sign_test_p(0, 5) == 0.0625
    assert sign_test_p(4, 1) == pytest.approx(2 * 6 / 32)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0


def test_summarize_only_from_the_command_line(base_config, tmp_path, capsys):
    from mhpo_vl.cli import main

    plan = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", [])
    plan.save()
    run = plan.runs()[0]
    write_run(run.dir, plan, run, [0.5] * 8, [0.5] * 8, 1.0, accuracies=(0.3, 0.4, 0.5))
    assert main(["study", "--summarize-only", "--output-dir", str(tmp_path / "s")]) == 0
    assert "summary.md" in capsys.readouterr().out and (tmp_path / "s" / "figures" / "demo.png").is_file()
    assert main(["study", "--output-dir", str(tmp_path / "t")]) == 2
    assert "--config is required" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end ----


@pytest.mark.slow
def test_a_tiny_study_end_to_end_then_a_rerun_skips_it(tmp_path, warm_tiny_vl_model_dir):
    """2 losses (MHPO and its on-policy-matched GRPO control) x 1 seed x the demo setting, each a real `mhpo-vl
    train` subprocess (HF rollouts: no vLLM start-up), then the summary; the rerun trains nothing."""
    from run_helpers import REPO, RUN_ENV, small_overrides

    base = tmp_path / "base.yaml"
    base.write_text("{}\n")
    # The already warm-started tiny model (its groups have reward differences, so updates are not zero), a short
    # warm-start on top (the study runs it in every run), one minibatch per step: each update starts on-policy.
    overrides = [o for o in small_overrides(warm_tiny_vl_model_dir, "unused", **{
        "rollout.backend": "hf", "rollout.n": "8", "trainer.minibatch_size": "4", "trainer.total_steps": "3",
        "warmstart.steps": "3", "warmstart.lr": "1e-4", "warmstart.batch_size": "8",
        "warmstart.response_template": "\\boxed{{{answer}}}"}) if not o.startswith("trainer.output_dir=")]
    out = tmp_path / "study"
    command = [sys.executable, "-m", "mhpo_vl.cli", "study", "--config", str(base), "--output-dir", str(out),
               "--losses", "mhpo,grpo_xmhpo", "--seeds", "1", "--settings", "demo", *overrides]
    first = subprocess.run(command, cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[1/2] demo/mhpo/seed1: starting" in first.stdout and "[2/2] demo/grpo_xmhpo/seed1: done in" in first.stdout

    runs = {loss: out / "demo" / loss / "seed1" for loss in ("mhpo", "grpo_xmhpo")}
    summaries = {loss: json.loads((d / "summary.json").read_text()) for loss, d in runs.items()}
    metrics = {loss: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
               for loss, d in runs.items()}
    # The first step with a non-zero update: before it both runs hold the same weights (a zero-advantage step moves
    # both alike, by weight decay only), so its rollouts are the same and, on-policy, so is the gradient.
    first_update = next((r["step"] for r in metrics["mhpo"] if r.get("grad_norm", 0) > 0), None)
    assert first_update is not None, "no step had reward differences in a group: nothing was compared"
    at_first = {loss: next(r for r in rows if r["step"] == first_update) for loss, rows in metrics.items()}
    control = yaml.safe_load((runs["grpo_xmhpo"] / "config.yaml").read_text())
    assert control["algorithm"]["loss"] == "grpo" and control["algorithm"]["loss_params"] == {"scale": on_policy_factor()}
    assert control["trainer"]["seed"] == control["data"]["seed"] == 1
    # Same seed, same set-up: the same warm-started model, validation and first rollouts in both runs ...
    assert summaries["mhpo"]["val_accuracy_initial"] == summaries["grpo_xmhpo"]["val_accuracy_initial"]
    assert at_first["mhpo"]["reward/mean"] == at_first["grpo_xmhpo"]["reward/mean"]
    # ... and on-policy the control's update is MHPO's.
    assert at_first["grpo_xmhpo"]["grad_norm"] == pytest.approx(at_first["mhpo"]["grad_norm"], rel=1e-4)
    assert "loss/survival_weight_mean" in at_first["mhpo"] and "loss/survival_weight_mean" not in at_first["grpo_xmhpo"]

    summary = json.loads((out / "summary.json").read_text())
    for group in summary["groups"]:
        assert (group["runs_done"], group["runs_planned"]) == (1, 1)
        s = summaries[group["loss"]]
        assert group["stats"]["val_accuracy_final"]["mean"] == s["val_accuracy_final"]
        assert group["stats"]["drop"]["mean"] == pytest.approx(s["val_accuracy_best"] - s["val_accuracy_final"])
    assert "| grpo_xmhpo | 1 (0) / 1 |" in (out / "summary.md").read_text()
    from mhpo_vl.runs.machine import (
        cpu_model,  # each run's summary names the machine it ran on, and the run table shows it
    )

    assert summaries["mhpo"]["machine"]["cpu"] == cpu_model() and summaries["mhpo"]["machine"]["logical_cpus"] >= 1
    assert f"| {cpu_model()} |" in (out / "summary.md").read_text()
    assert (out / "figures" / "demo.png").stat().st_size > 10_000

    stamps = {loss: (d / "summary.json").stat().st_mtime_ns for loss, d in runs.items()}
    again = subprocess.run(command, cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": done, skipped") == 2 and "starting" not in again.stdout
    assert stamps == {loss: (d / "summary.json").stat().st_mtime_ns for loss, d in runs.items()}


# ------------------------------------------------------------ issue 22 item 3: lock, foreign folders, validation ----


def test_a_second_study_on_the_same_folder_is_refused_and_deletes_nothing(base_config, tmp_path):
    """Two `study` on one folder used to delete each other's metrics (the runner removed a "new" run's
    metrics.jsonl before the trainer took its lock). The study now holds its folder's lock throughout."""
    plan = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", [])
    (run,) = plan.runs()
    refused = []

    def first_launch(command, log_path):
        (run.dir / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n')  # the first study's run trains
        with pytest.raises(StudyError, match=r"in use by pid \d+ .*\(study"):
            run_study(load_plan(plan.out_dir), launch=FakeLaunch(plan), log=lambda _: None)
        refused.append(True)
        assert (run.dir / "metrics.jsonl").read_text() == '{"step": 1, "reward/mean": 0.5}\n'
        return FakeLaunch(plan)(command, log_path)

    result = run_study(plan, launch=first_launch, log=lambda _: None)
    assert refused == [True] and result.ran == [run.name]
    assert not (plan.out_dir / "mhpo-vl.lock").exists()  # released when the study ended


def test_a_study_refuses_a_run_folder_another_tool_wrote_and_cleans_nothing(base_config, tmp_path):
    plan = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", [])
    (run,) = plan.runs()
    run.dir.mkdir(parents=True)
    (run.dir / "metrics.jsonl").write_text("not ours\n")
    (run.dir / "checkpoints").mkdir()
    (run.dir / "checkpoints" / "model.ckpt").write_bytes(b"w")
    launch = FakeLaunch(plan)
    with pytest.raises(StudyError, match="no mhpo-vl-run.json .*not made by mhpo-vl train"):
        run_study(plan, launch=launch, log=lambda _: None)
    assert launch.calls == [] and (run.dir / "metrics.jsonl").read_text() == "not ours\n"
    assert (run.dir / "checkpoints" / "model.ckpt").is_file()


def test_a_study_with_validation_off_is_refused_before_training(base_config, tmp_path):
    """The summary compares held-out accuracies: with trainer.val_every=0 every run used to train and the summary
    then failed with a traceback."""
    plan = make_plan(base_config, "mhpo", "1", "demo", tmp_path / "s", ["trainer.val_every=0"])
    launch = FakeLaunch(plan)
    with pytest.raises(StudyError, match=r"trainer.val_every=0 turns validation off.*trainer.val_every > 0"):
        run_study(plan, launch=launch, log=lambda _: None)
    assert launch.calls == []
