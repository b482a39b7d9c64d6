"""`mhpo-vl train --config C [--output-dir D] [key.path=value ...]`

Libraries' output (vLLM, transformers, torch, warnings, C-level prints) goes to <output_dir>/logs/train.log;
the terminal shows set-up lines, progress bars, validations and the summary (`--verbose`: everything live).
Exit status: 0 done, 2 settings / run directory refused, 3 diverged, 75 stopped by SIGTERM or SIGUSR1 after saving a
checkpoint (rerun to continue; mhpo_vl.runs.preemption), 1 any other error.
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    parser.add_argument("--output-dir", help="run directory (overrides trainer.output_dir)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad dataset rows and prompts over data.max_prompt_length, listing each one by id "
                             "(same as data.skip_bad=true); without it the first one stops the run before it starts")
    parser.add_argument("overrides", nargs="*", help="config overrides as key.path=value, e.g. optim.lr=2e-6")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.config import load_config
    from mhpo_vl.runs import console

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"trainer.output_dir={args.output_dir}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    cfg = load_config(args.config, overrides)  # a ConfigError is one line on stderr (mhpo_vl.cli), exit 2
    from mhpo_vl.train.memory_plan import MemoryPlanError, check_before_training

    try:  # on a GPU, before anything loads: refuse a config whose steady-state memory cannot fit (mhpo-vl plan-memory)
        for line in check_before_training(cfg):
            console.line(line)
    except MemoryPlanError as e:
        console.line(f"mhpo-vl train: {e}", error=True)
        return 2
    from mhpo_vl.runs.checkpoints import CheckpointError
    from mhpo_vl.runs.preemption import PREEMPTED_EXIT_CODE, Preempted
    from mhpo_vl.runs.run_dir import RunDirError

    log = console.log_path(cfg.trainer.output_dir, "train")
    with console.capture(log, verbose=args.verbose) as captured:
        from mhpo_vl.train import TrainingDivergedError, build_trainer

        try:
            trainer = build_trainer(cfg)
        except (RunDirError, CheckpointError) as e:  # the directory is held, bound to other settings, or damaged
            console.line(f"mhpo-vl train: {e}", error=True)
            return 2
        try:
            summary = trainer.fit()
        except TrainingDivergedError as e:
            console.line(f"mhpo-vl train: {e}", error=True)
            return 3
        except Preempted as e:  # SIGTERM / SIGUSR1: a checkpoint was written; the scheduler may requeue the job
            console.line(f"mhpo-vl train: {e}", error=True)
            return PREEMPTED_EXIT_CODE
    if trainer.rt.is_main:
        keys = ("val_accuracy_before_warmstart", "val_accuracy_initial", "val_accuracy_final", "val_accuracy_best",
                "steps", "wall_seconds")
        print(json.dumps({k: summary.get(k) for k in keys if k in summary}, indent=1))
        print(f"run directory: {cfg.trainer.output_dir}  (plot it: mhpo-vl plot {cfg.trainer.output_dir})")
        if captured:
            print(f"third-party output (vLLM, transformers, torch, warnings): {captured}")
    return 0
