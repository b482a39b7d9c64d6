"""`mhpo-vl plot-loss-shapes OUT_DIR`: draw psi, zeta and every loss's gradient multiplier M(r) as PNGs.

The curves come from mhpo_vl.losses itself (see mhpo_vl/plots/loss_shapes.py): the paper's Figure 2 (LFM) and
Figure 3 (DHP) analogues, and M(r) of GRPO, DAPO, GSPO, SAPO and MHPO side by side.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder for lfm.png, dhp.png and grad_multipliers.png")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.plots.loss_shapes import draw_all

    for path in draw_all(args.out_dir):
        print(path)
    return 0
