"""`mhpo-vl train --config C [--output-dir D] [key.path=value ...]`

Libraries' output (vLLM, transformers, torch, warnings, C-level prints) goes to <output_dir>/logs/train.log;
the terminal shows set-up lines, progress bars, validations and the summary (`--verbose`: everything live).
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--output-dir", help="run directory (overrides trainer.output_dir)")
    parser.add_argument("overrides", nargs="*", help="config overrides as key.path=value, e.g. optim.lr=2e-6")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl import console
    from mhpo_vl.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"trainer.output_dir={args.output_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, ValueError) as e:
        print(f"mhpo-vl train: config error: {e}", file=sys.stderr)
        return 2
    log = console.log_path(cfg.trainer.output_dir, "train")
    with console.capture(log, verbose=args.verbose) as captured:
        from mhpo_vl.trainer import Trainer, TrainingDivergedError

        trainer = Trainer(cfg)
        try:
            summary = trainer.fit()
        except TrainingDivergedError as e:
            console.line(f"mhpo-vl train: {e}", error=True)
            return 3
    if trainer.rt.is_main:
        keys = ("val_accuracy_before_warmstart", "val_accuracy_initial", "val_accuracy_final", "val_accuracy_best",
                "steps", "wall_seconds")
        print(json.dumps({k: summary.get(k) for k in keys if k in summary}, indent=1))
        print(f"run directory: {cfg.trainer.output_dir}  (plot it: mhpo-vl plot {cfg.trainer.output_dir})")
        if captured:
            print(f"third-party output (vLLM, transformers, torch, warnings): {captured}")
    return 0
