"""`mhpo-vl eval-run RUN_DIR --suites ... --output-dir D [--checkpoints all|best,latest|NAMES] [--best-by val|suite]`

Evaluates the checkpoints of a training run (``RUN_DIR/checkpoints/step_*``, listed in ``index.json``) with the same
sampling flags as `mhpo-vl eval` and the same library call (:func:`mhpo_vl.evaluation.run_evaluation`), each into
``D/<step>/`` (an ordinary, resumable eval directory), then writes the
best-vs-latest table of the paper's Table 4 (``D/best_vs_latest.md`` / ``.json``) and every checkpoint's Avg@n
(``D/checkpoints.md``).

"Best" is, by default, the checkpoint the trainer marked best by VALIDATION accuracy (index.json ``best``): a choice
made without the evaluation suites. ``--best-by suite`` (older name: ``benchmark``) instead takes, per suite, the
evaluated checkpoint with the highest score there: an oracle choice on the test set, optimistic by construction (say so when you report it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mhpo_vl.commands.eval import add_sampling_arguments, eval_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="training run directory (holds checkpoints/index.json)")
    parser.add_argument("--output-dir", required=True, help="where each checkpoint's evaluation and the tables go")
    parser.add_argument("--checkpoints", default="all",
                        help="which checkpoints: all (default: every step_* folder present), or a comma list of "
                             "names and the words best / latest")
    parser.add_argument("--best-by", choices=("val", "suite", "benchmark"), default="val",
                        help="val (default): index.json's best (validation accuracy); suite: per suite, the "
                             "checkpoint scoring highest on it (an oracle on the test set); benchmark: older name of suite")
    add_sampling_arguments(parser)


def read_index(run_dir: Path) -> dict[str, Any]:
    from mhpo_vl.runs.checkpoints import CheckpointManager  # the trainer's checkpoint layout, in one place

    checkpoints = CheckpointManager(run_dir)
    path = checkpoints.root / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint index at {path} (is {run_dir} a training run directory with checkpoints?)")
    index = checkpoints.index()  # a corrupt file: CheckpointError (a ValueError) naming it
    if not isinstance(index, dict) or not index.get("latest"):
        raise ValueError(f"{path}: no 'latest' checkpoint named")
    return index


def select_checkpoints(run_dir: Path, index: dict[str, Any], spec: str) -> list[str]:
    """Checkpoint folder names to evaluate, in step order; every one must exist on disk."""
    root = run_dir / "checkpoints"
    present = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    if spec == "all":
        names = present
    else:
        names = []
        for item in (part.strip() for part in spec.split(",") if part.strip()):
            name = index.get(item) if item in ("best", "latest") else item
            if name is None:
                raise ValueError(f"--checkpoints {item}: index.json names no {item} checkpoint")
            if name not in names:
                names.append(name)
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder(s) not found under {root}: {', '.join(missing)} "
                                f"(present: {', '.join(present) or 'none'})")
    if not names:
        raise FileNotFoundError(f"no step_* checkpoint folders under {root}")
    return sorted(names)


def best_vs_latest(summaries: dict[str, dict[str, Any]], index: dict[str, Any], best_by: str) -> dict[str, Any]:
    """{"benchmarks": {name: {best, best_checkpoint, latest, latest_checkpoint, drop}}, "average": {...}}; drop =
    latest - best (negative when the latest checkpoint is worse), fractions."""
    latest = index["latest"]
    if latest not in summaries:
        raise ValueError(f"the latest checkpoint {latest} was not evaluated (add it to --checkpoints)")
    best: str | None = None  # the checkpoint index.json names best (best_by "val")
    if best_by == "val":
        best = index.get("best")
        if best is None:
            raise ValueError("index.json names no best checkpoint (the run recorded no validation accuracy); "
                             "use --best-by suite")
        if best not in summaries:
            raise ValueError(f"the best checkpoint {best} was not evaluated (add it to --checkpoints)")
    names = list(summaries[latest]["benchmarks"])
    rows: dict[str, Any] = {}
    for name in names:
        if best is not None:  # best_by "val"
            best_name = best
        else:  # ties: the earliest step wins (names sort by step)
            best_name = max(sorted(summaries), key=lambda c: summaries[c]["benchmarks"][name]["metrics"]["avg"])
        best_value = summaries[best_name]["benchmarks"][name]["metrics"]["avg"]
        latest_value = summaries[latest]["benchmarks"][name]["metrics"]["avg"]
        rows[name] = {"best": best_value, "best_checkpoint": best_name, "latest": latest_value,
                      "latest_checkpoint": latest, "drop": latest_value - best_value}
    avg_best = sum(r["best"] for r in rows.values()) / len(rows)
    avg_latest = sum(r["latest"] for r in rows.values()) / len(rows)
    return {"best_by": best_by, "benchmarks": rows,
            "average": {"best": avg_best, "latest": avg_latest, "drop": avg_latest - avg_best}}


def best_vs_latest_markdown(table: dict[str, Any], run_label: str) -> str:
    from mhpo_vl.evaluation.results import markdown_table, pct

    rows = table["benchmarks"]
    names = list(rows)
    how = ("validation accuracy (index.json best)" if table["best_by"] == "val"
           else "the highest score per suite (oracle on the test set)")
    parts = [f"# Best vs latest checkpoint: {run_label}", "",
             f"Avg@n (%); best checkpoint chosen by {how}. Δ = latest − best.", ""]
    # The paper's Table 4 shape: one row per run, Best/Latest per suite, then Avg. and Δ.
    header = ["Run"] + [f"{n} {w}" for n in names for w in ("Best", "Latest")] + ["Avg. Best", "Avg. Latest", "Δ"]
    row = [run_label] + [pct(rows[n][w]) for n in names for w in ("best", "latest")]
    avg = table["average"]
    row += [pct(avg["best"]), pct(avg["latest"]), f"{100 * avg['drop']:+.1f}"]
    parts += [markdown_table(header, [row]), ""]
    detail = [[n, f"{pct(r['best'])} ({r['best_checkpoint']})", f"{pct(r['latest'])} ({r['latest_checkpoint']})",
               f"{100 * r['drop']:+.1f}"] for n, r in rows.items()]
    detail.append(["Avg.", pct(avg["best"]), pct(avg["latest"]), f"{100 * avg['drop']:+.1f}"])
    parts += [markdown_table(["Suite", "Best", "Latest", "Δ"], detail), ""]
    return "\n".join(parts)


def checkpoints_markdown(summaries: dict[str, dict[str, Any]], index: dict[str, Any]) -> str:
    from mhpo_vl.evaluation.results import markdown_table, pct

    val = {h.get("name"): h.get("val_accuracy") for h in index.get("history", []) if isinstance(h, dict)}
    names = list(next(iter(summaries.values()))["benchmarks"])
    rows = []
    for ckpt, s in summaries.items():
        marks = [w for w in ("best", "latest") if index.get(w) == ckpt]
        rows.append([ckpt + (f" ({', '.join(marks)})" if marks else ""), pct(val.get(ckpt))]
                    + [pct(s["benchmarks"][n]["metrics"]["avg"]) for n in names] + [pct(s["average"])])
    return "# Every checkpoint (Avg@n, %)\n\n" + markdown_table(["Checkpoint", "val acc"] + names + ["Avg."], rows) + "\n"


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.evaluation import run_evaluation

    if args.best_by == "benchmark":
        args.best_by = "suite"
    run_dir = Path(args.run_dir)
    out = Path(args.output_dir)
    try:
        index = read_index(run_dir)
        names = select_checkpoints(run_dir, index, args.checkpoints)
        # Fail on a bad best/latest choice before hours of sampling, not after.
        if index["latest"] not in names:
            raise ValueError(f"the latest checkpoint {index['latest']} is not among --checkpoints {args.checkpoints}")
        if args.best_by == "val" and index.get("best") is None:
            raise ValueError("index.json names no best checkpoint (no validation accuracy recorded); use --best-by suite")
        if args.best_by == "val" and index["best"] not in names:
            raise ValueError(f"the best checkpoint {index['best']} is not among --checkpoints {args.checkpoints}")
        summaries = {}
        for name in names:
            print(f"[mhpo-vl eval-run] {name}", file=sys.stderr)
            config = eval_config(args, str(run_dir / "checkpoints" / name), out / name, label=f"{run_dir.name}/{name}")
            summaries[name] = run_evaluation(config)
        table = best_vs_latest(summaries, index, args.best_by)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mhpo-vl eval-run: error: {exc}", file=sys.stderr)
        return 2
    from mhpo_vl.runs.atomic_io import write_durably

    write_durably(out / "best_vs_latest.json", json.dumps({"run_dir": str(run_dir), "index": index, **table}, indent=1))
    text = best_vs_latest_markdown(table, run_dir.name)
    write_durably(out / "best_vs_latest.md", text)
    write_durably(out / "checkpoints.md", checkpoints_markdown(summaries, index))
    print(text)
    print(f"wrote {out / 'best_vs_latest.md'}, {out / 'checkpoints.md'} and one eval directory per checkpoint under {out}/")
    return 0
