"""`mhpo-vl report EVAL_DIR [EVAL_DIR ...] [--labels A,B,...] [--metric avg|maj|pass@K] [--out FILE]`

One Markdown table comparing evaluated runs side by side (rows = runs, columns = evaluation suites + Avg.), each cell with its
difference from the FIRST run, as the paper's Table 1 (e.g. base model first, then GRPO, MHPO). Reads the
``summary.json`` that `mhpo-vl eval` writes (a directory or the file itself).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="evaluation directories (or their summary.json); the first is the baseline")
    parser.add_argument("--labels", default=None, help="comma-separated row names (default: each summary's model label)")
    parser.add_argument("--metric", default="avg", help="avg (Avg@n, default), maj (majority vote) or pass@K (e.g. pass@8)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")


def build_report(paths: list[str], labels: list[str] | None = None, metric: str = "avg") -> str:
    from mhpo_vl.evaluation.results import comparison_table, load_summary

    summaries = [load_summary(p) for p in paths]
    if labels is None:
        labels = [s.get("model_label") or Path(p).name for s, p in zip(summaries, paths)]
    if len(labels) != len(summaries):
        raise ValueError(f"--labels has {len(labels)} name(s) for {len(summaries)} run(s)")
    table, notes = comparison_table(summaries, labels, metric)
    settings = {(s["sampling"]["n"], s["sampling"]["temperature"], s["sampling"]["top_p"], s["sampling"]["max_tokens"])
                for s in summaries}
    if len(settings) > 1:
        notes.append("the runs were sampled with different settings (n, temperature, top_p, max_tokens): "
                     + "; ".join(f"{label}: {s['sampling']['n']}, {s['sampling']['temperature']}, "
                                 f"{s['sampling']['top_p']}, {s['sampling']['max_tokens']}"
                                 for label, s in zip(labels, summaries)))
    name = {"avg": "Avg@n", "maj": "Maj@n", "majority": "Maj@n"}.get(metric, metric.replace("pass@", "Pass@"))
    lines = [f"{name} (%); in parentheses the difference from {labels[0]}.", "", table, ""]
    lines += [f"Note: {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def run(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    try:
        text = build_report(args.runs, labels, args.metric)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mhpo-vl report: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0
