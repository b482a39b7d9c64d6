"""`mhpo-vl plot RUN_DIR [RUN_DIR ...] [--out FILE] [--smooth N]`"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", help="PNG path (default: <first run>/curves.png)")
    parser.add_argument("--smooth", type=int, default=1, help="moving-average window for per-step curves")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.plots.training_curves import plot_runs

    out = args.out or str(Path(args.runs[0]) / "curves.png")
    print(plot_runs(args.runs, out, smooth=args.smooth))
    return 0
