"""A study's numbers: one record per run (from its summary.json, metrics.jsonl and config.yaml), then mean, std and
extremes over seeds per (setting, loss). Pure functions of the run folders, so `--summarize-only` and the tests
rebuild exactly what a study wrote. What each number means is DEFINITIONS (written into summary.md as is).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.runs.loggers import read_metrics
from mhpo_vl.study.plan import REUSE_STEPS, Plan, Run
from mhpo_vl.study.runner import run_state

SPIKE_FACTOR = 3.0
SPIKE_WINDOW = 10
SPIKE_MIN_HISTORY = 5
SPIKE_RULE = (f"an RL step whose largest pre-clipping gradient norm (`grad_norm_max`) is above the run's "
              f"`optim.max_grad_norm` AND above {SPIKE_FACTOR:g} x the median `grad_norm_max` of the run's previous "
              f"{SPIKE_WINDOW} steps (at least {SPIKE_MIN_HISTORY} of them with a finite norm are needed, so the "
              f"first {SPIKE_MIN_HISTORY} steps are never spikes; non-finite norms are counted as skipped updates, "
              "not spikes)")
FINAL_WINDOW = 5
LATE_SHARE = 0.2  # "min last 20%": the validations in the last fifth of the run's steps
FINISHED = ("done", "diverged")
DEFINITIONS = {
    "start / final / best": "held-out accuracy (Avg@k) at the start of RL, at its end, and the best validation of the "
                            "run (summary.json val_accuracy_initial / _final / _best)",
    "drop best->final": "best - final: the paper's Table 4 best -> latest degradation (printed there as final - best)",
    "min last 20%": f"the lowest held-out accuracy of the run's validations at steps >= {1 - LATE_SHARE:g} x its last "
                    "validation step (summary.json val_history): where the drop reads one checkpoint, this reads the "
                    "whole end of the run",
    "max grad norm": "the largest gradient norm before clipping of any optimiser step of the run",
    "grad-norm spikes": SPIKE_RULE,
    "final entropy / final reward": f"mean response/entropy (nats/token) / reward/mean over the last {FINAL_WINDOW} RL "
                                    "steps (one step's batch is too noisy to stand for the end of a run)",
    "skipped updates": "optimiser steps skipped for a non-finite loss or gradient",
    "paired by seed": "the plan's first loss minus each other loss, seed by seed, over the seeds where both runs "
                      "finished from the same start accuracy (the same warm-start: the same seed on another CPU's "
                      "float path warm-starts elsewhere and is listed as unpaired); mean ± sample std of the "
                      "differences, the paired-t 95% interval (mean ± t(n-1) x std / sqrt(n)), the seeds where the "
                      "first loss is above / below / level, and the exact two-sided sign test's p (ties dropped; with "
                      "5 pairs its smallest value is 1/16 = 0.0625)",
    "cells": "mean ± sample std over seeds (std needs 2 seeds), then the worst seed (min of accuracies, max of the "
             "others); diverged runs count in every column except the accuracies; unfinished runs in none",
}
# (record key, column title); the accuracy columns come from summary.json, hence only from finished runs.
COLUMNS = [
    ("val_accuracy_initial", "start"), ("val_accuracy_final", "final"), ("val_accuracy_best", "best"),
    ("drop", "drop best->final"), ("late_min", "min last 20%"), ("max_grad_norm", "max grad norm"), ("spikes", "grad-norm spikes"),
    ("final_entropy", "final entropy"), ("final_reward", "final reward"), ("skipped_updates", "skipped updates"),
]


def spike_steps(steps: list[int], norms: list[float], floor: float) -> list[int]:
    """Steps that are gradient-norm spikes by SPIKE_RULE; ``norms[i]`` is the ``grad_norm_max`` of ``steps[i]``."""
    found = []
    for i, (step, norm) in enumerate(zip(steps, norms)):
        history = [g for g in norms[max(0, i - SPIKE_WINDOW) : i] if math.isfinite(g)]
        if len(history) < SPIKE_MIN_HISTORY or not math.isfinite(norm):
            continue
        if norm > floor and norm > SPIKE_FACTOR * statistics.median(history):
            found.append(step)
    return found


def number(value: Any) -> float:
    """A metrics.jsonl value as a float: non-finite values are stored as the strings "nan" / "inf"."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL-step rows of metrics.jsonl (validation-only rows, e.g. before the warm-start, carry no reward)."""
    return [r for r in rows if "reward/mean" in r]


def series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` over the RL curve; tagged validation rows (before the warm-start) are not on it."""
    return [(r["step"], number(r[key])) for r in rows if key in r and "val/tag" not in r]


def run_record(run: Run) -> dict[str, Any]:
    record: dict[str, Any] = {"setting": run.setting, "loss": run.variant.label, "seed": run.seed,
                              "dir": str(run.dir), "status": run_state(run.dir)}
    if not (run.dir / "metrics.jsonl").is_file():
        return record
    rows = step_rows(read_metrics(run.dir))
    config_path = run.dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (a run folder with metrics.jsonl always has its config)")
    floor = float(yaml.safe_load(config_path.read_text())["optim"]["max_grad_norm"])
    where = run.dir / "metrics.jsonl"
    try:
        steps = [r["step"] for r in rows]
        norms = [number(r["grad_norm_max"]) for r in rows]
        last = rows[-FINAL_WINDOW:]
        record.update({
            "steps": steps[-1] if steps else 0,
            "max_grad_norm": max((g for g in norms if math.isfinite(g)), default=None),
            "spike_steps": spike_steps(steps, norms, floor),
            "final_entropy": statistics.fmean(number(r["response/entropy"]) for r in last) if last else None,
            "final_reward": statistics.fmean(number(r["reward/mean"]) for r in last) if last else None,
            "skipped_updates": sum(number(r["updates/skipped_nonfinite"]) for r in rows),
        })
    except (KeyError, ValueError) as err:
        raise ValueError(f"{where}: an RL-step row lacks or has a bad value for {err}") from None
    record["spikes"] = len(record["spike_steps"])
    if record["status"] == "done":
        record.update(_accuracies(run.dir / "summary.json"))
    return record


def _accuracies(path: Path) -> dict[str, Any]:
    summary = json.loads(path.read_text())
    keys = ("val_accuracy_initial", "val_accuracy_final", "val_accuracy_best")
    missing = [k for k in keys if not isinstance(summary.get(k), (int, float))]
    if missing:
        raise ValueError(f"{path}: no number for {', '.join(missing)} (was validation off?)")
    out: dict[str, Any] = {k: float(summary[k]) for k in keys}
    out["drop"] = out["val_accuracy_best"] - out["val_accuracy_final"]
    history = [r for r in summary.get("val_history") or [] if not r.get("tag")]  # tagged: before the warm-start
    if history:
        last = max(r["step"] for r in history)
        out["late_min"] = min(float(r["accuracy"]) for r in history if r["step"] >= (1 - LATE_SHARE) * last)
    out["wall_seconds"] = summary.get("wall_seconds")
    out["cpu"] = (summary.get("machine") or {}).get("cpu")  # summaries before 2 Dec 2026 do not name it
    return out


def stats(values: list[float | None]) -> dict[str, Any]:
    """n, mean, sample std (n - 1; None below 2 values), min, max of the values present."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(present), "mean": statistics.fmean(present),
            "std": statistics.stdev(present) if len(present) > 1 else None, "min": min(present), "max": max(present)}


def group_records(plan: Plan, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (setting, loss) in plan order: run counts and stats over seeds of every COLUMNS key.
    Only finished runs count: done ones everywhere, diverged ones (no final validation) outside the accuracy columns;
    runs still partial or not started are left out (``runs_planned`` - done - diverged of them)."""
    groups = []
    for setting in plan.settings:
        for variant in plan.variants:
            mine = [r for r in records if r["setting"] == setting and r["loss"] == variant.label
                    and r["status"] in FINISHED]
            groups.append({
                "setting": setting, "loss": variant.label, "loss_name": variant.loss, "scale": variant.scale,
                "runs_planned": len(plan.seeds), "runs_done": sum(r["status"] == "done" for r in mine),
                "runs_diverged": sum(r["status"] == "diverged" for r in mine),
                "stats": {key: stats([r.get(key) for r in mine]) for key, _ in COLUMNS},
            })
    return groups


def reuse_boundary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reuse sweep read across its settings: one entry per (loss, optimiser steps per rollout batch) with the
    finished runs' held-out accuracy at the start, at the end and over the last 20% (each with stats over seeds), and
    how many seeds end at or above their start ("held"). Entries are in loss order of first appearance, then by
    steps; settings outside the sweep (``REUSE_STEPS``) are ignored."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        if r["setting"] in REUSE_STEPS and r["status"] == "done":
            epochs, parts = REUSE_STEPS[r["setting"]]
            out.setdefault((r["loss"], epochs * parts), []).append(r)
    losses = list(dict.fromkeys(loss for loss, _ in out))
    return [{"loss": loss, "steps_per_batch": n, "setting": runs[0]["setting"], "seeds": [r["seed"] for r in runs],
             "held": sum(r["val_accuracy_final"] >= r["val_accuracy_initial"] for r in runs),
             **{key: stats([r.get(key) for r in runs]) for key in ("val_accuracy_initial", "val_accuracy_final",
                                                                    "late_min", "drop")},
             "finals": [r["val_accuracy_final"] for r in runs], "late_mins": [r.get("late_min") for r in runs]}
            for (loss, n), runs in sorted(out.items(), key=lambda kv: (losses.index(kv[0][0]), kv[0][1]))]


# Two-sided 95% quantiles of Student's t for 1-30 degrees of freedom; above 30, df 30's (a slightly wide interval).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
PAIRED_KEYS = (("val_accuracy_final", "final"), ("drop", "drop best->final"), ("late_min", "min last 20%"))
SAME_START = 1e-9  # two runs of one seed are a pair when their start accuracies agree to this


def sign_test_p(above: int, below: int) -> float:
    """Exact two-sided sign test (ties dropped beforehand): P(a split at least this uneven | no difference)."""
    n = above + below
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(above, below) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_differences(plan: Plan, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, the plan's first loss against each other loss, seed by seed: reference - other of each
    PAIRED_KEYS measure over the seeds where both runs are done AND start from the same accuracy (the same
    warm-start; on another CPU's float path the same seed warm-starts elsewhere and the two runs are not a pair).
    Per measure: the per-seed differences, mean, sample std, the paired-t 95% interval (2 pairs or more), how many
    seeds put the reference above / below / level with the other, and the exact sign test's two-sided p."""
    if len(plan.variants) < 2:
        return []
    ref = plan.variants[0].label
    done = {(r["setting"], r["loss"], r["seed"]): r for r in records if r["status"] == "done"}
    out = []
    for setting in plan.settings:
        for variant in plan.variants[1:]:
            paired, unpaired = [], []
            for seed in plan.seeds:
                a, b = done.get((setting, ref, seed)), done.get((setting, variant.label, seed))
                if a is None or b is None:
                    continue
                if abs(a["val_accuracy_initial"] - b["val_accuracy_initial"]) <= SAME_START:
                    paired.append((seed, a, b))
                else:
                    unpaired.append({"seed": seed, "starts": [a["val_accuracy_initial"], b["val_accuracy_initial"]],
                                     "cpus": [a.get("cpu"), b.get("cpu")]})
            entry: dict[str, Any] = {"setting": setting, "reference": ref, "other": variant.label,
                                     "seeds": [seed for seed, _, _ in paired], "unpaired": unpaired}
            for key, _ in PAIRED_KEYS:
                diffs = [a[key] - b[key] for _, a, b in paired if a.get(key) is not None and b.get(key) is not None]
                summary = stats(diffs)
                n, mean, std = summary["n"], summary["mean"], summary["std"]
                half = T_975[min(n - 1, len(T_975)) - 1] * std / math.sqrt(n) if std is not None else None
                above, below = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
                entry[key] = {"diffs": diffs, "n": n, "mean": mean, "std": std,
                              "ci95": [mean - half, mean + half] if half is not None else None,
                              "above": above, "below": below, "level": n - above - below,
                              "sign_p": sign_test_p(above, below)}
            out.append(entry)
    return out


def seed_band(per_seed: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, mean, min and max over the seeds that have a finite value at each step (for the figures)."""
    by_step: dict[int, list[float]] = {}
    for points in per_seed:
        for step, value in points:
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (steps, [statistics.fmean(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])
