"""One figure per setting: held-out accuracy, gradient norm, training reward and the fraction of answers cut at
max_tokens per loss (mean over seeds, min-max band), and MHPO's survival weight and gradient multiplier over training
(the quantities that separate it from a rescaled GRPO). The truncated fraction shows the collapse seen in the
stress setting: a policy that stops ending its answers earns `reward.truncated_reward` (0 in the demo) on every
rollout, and groups of equal rewards give no gradient to leave that state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mhpo_vl.runs.loggers import read_metrics
from mhpo_vl.study.aggregate import FINISHED, seed_band, series, step_rows
from mhpo_vl.study.plan import Plan
from mhpo_vl.study.runner import run_state


def load_curves(plan: Plan, setting: str) -> dict[str, list[list[dict[str, Any]]]]:
    """loss label -> the metrics rows of each finished seed of ``setting``."""
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for run in plan.runs():
        if run.setting == setting and run_state(run.dir) in FINISHED:
            curves.setdefault(run.variant.label, []).append(read_metrics(run.dir))
    return curves


def _band(ax, per_seed_rows, key: str, label: str, color, *, rl_steps_only: bool, style: str = "-") -> bool:
    per_seed = [series(step_rows(rows) if rl_steps_only else rows, key) for rows in per_seed_rows]
    steps, mean, lo, hi = seed_band(per_seed)
    if not steps:
        return False
    ax.plot(steps, mean, style, color=color, label=label, marker="o" if not rl_steps_only else None, ms=3)
    if len(per_seed_rows) > 1:
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, linewidth=0)
    return True


def plot_setting(plan: Plan, setting: str, out_path: Path) -> Path | None:
    """The setting's figure, or None when no run of it has finished yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mhpo_vl.losses.mhpo import DEFAULTS, grad_multiplier_bound

    curves = load_curves(plan, setting)
    if not curves:
        return None
    colors = {v.label: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(plan.variants)}
    fig, axes = plt.subplots(3, 2, figsize=(12, 12))
    acc, grad, reward, truncated, survival, multiplier = axes.flat
    for label, rows in curves.items():
        n = f"{label} ({len(rows)} seed{'s' if len(rows) > 1 else ''})"
        # val/accuracy sits on RL-step rows and on the step-0 row before RL: every untagged row, not only RL steps.
        _band(acc, rows, "val/accuracy", n, colors[label], rl_steps_only=False)
        _band(grad, rows, "grad_norm_max", n, colors[label], rl_steps_only=True)
        _band(reward, rows, "reward/mean", n, colors[label], rl_steps_only=True)
        _band(truncated, rows, "response/truncated_fraction", n, colors[label], rl_steps_only=True)
        _band(survival, rows, "loss/survival_weight_mean", n, colors[label], rl_steps_only=True)
        if _band(multiplier, rows, "loss/grad_multiplier_mean", f"{n} mean", colors[label], rl_steps_only=True):
            _band(multiplier, rows, "loss/grad_multiplier_max", f"{n} max", colors[label], rl_steps_only=True, style="--")
    multiplier.axhline(grad_multiplier_bound(DEFAULTS["c"]), color="grey", lw=0.8, ls=":", label="exp(c^2/4), c=1.5")
    grad.set_yscale("log")
    titles = [(acc, "held-out accuracy (Avg@k); band: min-max over seeds"),
              (grad, "largest grad norm of the step (before clipping)"),
              (reward, "training reward (mean over the step's rollouts)"),
              (truncated, "fraction of rollouts cut at max_tokens"),
              (survival, "MHPO survival weight exp(-zeta), token mean"),
              (multiplier, "MHPO gradient multiplier M(r): mean (solid), max (dashed)")]
    for ax, title in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"study setting: {setting}")
    return _save(fig, out_path)


def plot_reuse_boundary(entries: list[dict[str, Any]], out_path: Path) -> Path | None:
    """The reuse sweep in one figure (``aggregate.reuse_boundary``'s entries): held-out accuracy at the end and the
    lowest over the last 20% of steps against optimiser steps per rollout batch, each seed a dot, the mean a line,
    the mean start dotted. None when fewer than two sweep points have finished."""
    if len({e["steps_per_batch"] for e in entries}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    losses = list(dict.fromkeys(e["loss"] for e in entries))
    for i, loss in enumerate(losses):
        color = plt.get_cmap("tab10")(i % 10)
        mine = [e for e in entries if e["loss"] == loss]
        xs = [e["steps_per_batch"] for e in mine]
        for ax, key, dots in ((axes[0], "val_accuracy_final", "finals"), (axes[1], "late_min", "late_mins")):
            ax.plot(xs, [e[key]["mean"] for e in mine], "-", color=color, label=f"{loss} (mean over seeds)")
            for e in mine:
                values = [v for v in e[dots] if v is not None]
                ax.plot([e["steps_per_batch"]] * len(values), values, "o", color=color, ms=4, alpha=0.6)
            ax.plot(xs, [e["val_accuracy_initial"]["mean"] for e in mine], ":", color=color, lw=1,
                    label=f"{loss}: start (mean)")
    for ax, title in ((axes[0], "held-out accuracy at the end of RL"),
                      (axes[1], "lowest held-out accuracy over the last 20% of steps")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({e["steps_per_batch"] for e in entries}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("optimiser steps per rollout batch (demo lr)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("the reuse boundary: dots are seeds")
    return _save(fig, out_path)


def _save(fig, out_path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
