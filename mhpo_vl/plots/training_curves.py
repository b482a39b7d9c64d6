"""Training curves of one or several runs in one figure (the paper's Figure 1 b/c: reward and gradient norm per
step, for comparing losses), plus validation accuracy, response length and entropy."""
from __future__ import annotations

import json
from pathlib import Path

from mhpo_vl.runs.loggers import read_metrics

PANELS = [
    ("reward/mean", "reward (mean)"),
    ("val/accuracy", "validation accuracy (Avg@k)"),
    ("grad_norm", "grad norm (before clipping)"),
    ("response/length_mean", "response length (tokens)"),
    ("response/entropy", "policy entropy (nats/token)"),
    ("loss/survival_weight_mean", "MHPO survival weight exp(-zeta)"),
]


def run_label(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    loss = json.loads(summary.read_text()).get("loss") if summary.exists() else None
    return f"{run_dir.name} ({loss})" if loss else run_dir.name


def plot_runs(run_dirs: list[str | Path], out_path: str | Path, smooth: int = 1) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    present = [(k, t) for k, t in PANELS if any(k in row for _, rows in runs for row in rows)]
    cols = 3
    rows_n = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, (key, title) in zip(axes.flat, present):
        for run_dir, rows in runs:
            # Tagged rows (e.g. validation before the SFT warm-start) are not points of the RL curve.
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "val/tag" not in r]
            if not pts:
                continue
            xs, ys = zip(*pts)
            smoothed = _moving_average(list(ys), smooth) if smooth > 1 and key != "val/accuracy" else list(ys)
            ax.plot(xs, smoothed, marker="o" if key == "val/accuracy" else None, ms=3, label=run_label(run_dir))
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
