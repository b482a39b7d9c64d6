"""`mhpo-vl study --config BASE.yaml --output-dir studies/NAME [--losses ...] [--seeds ...] [--settings ...]
[key=value ...]` and `mhpo-vl study --summarize-only --output-dir studies/NAME` (docs/study.md)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mhpo_vl.study.plan import DEFAULT_LOSSES, DEFAULT_SETTINGS, SETTINGS

    parser.add_argument("--config", help="base experiment YAML (the 'demo' setting runs it as is); required unless "
                                          "--summarize-only")
    parser.add_argument("--output-dir", required=True, help="study folder: <dir>/<setting>/<loss>/seed<k>/ + summary")
    parser.add_argument("--losses", default=DEFAULT_LOSSES,
                        help="comma list of losses; NAME_xS scales NAME's policy term by S, NAME_xmhpo by MHPO's "
                             f"on-policy factor exp(-zeta(0)) ~ 0.265 (default: {DEFAULT_LOSSES})")
    parser.add_argument("--seeds", default="1,2,3", help="comma list of seeds (trainer.seed and data.seed; default 1,2,3)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help=f"comma list from {', '.join(SETTINGS)} (default {DEFAULT_SETTINGS})")
    parser.add_argument("--summarize-only", action="store_true",
                        help="train nothing: rebuild summary.md, summary.json and figures from the runs on disk")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, as key.path=value")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.study.plan import StudyError, load_plan, make_plan
    from mhpo_vl.study.report import build_report
    from mhpo_vl.study.runner import run_study

    try:
        if args.summarize_only:
            plan = load_plan(args.output_dir)
        elif not args.config:
            raise StudyError("--config is required (unless --summarize-only)")
        else:
            plan = make_plan(args.config, args.losses, args.seeds, args.settings, args.output_dir, args.overrides)
            print(f"study: {len(plan.runs())} run(s) into {plan.out_dir}; settings: "
                  + "; ".join(f"{s}: {' '.join(o) or 'base config as is'}" for s, o in plan.settings.items()),
                  flush=True)
            result = run_study(plan, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # StudyInterrupted (the running training was stopped) or Ctrl-C between runs
        print("study: interrupted; rerun the same command to continue (finished runs are skipped, the stopped run "
              "resumes from its latest checkpoint)", file=sys.stderr)
        return 130
    except StudyError as err:
        print(f"mhpo-vl study: {err}", file=sys.stderr)
        return 2
    for what, path in build_report(plan).items():
        print(f"{what}: {path}")
    return 1 if not args.summarize_only and result.failed else 0
