"""`mhpo-vl` command line. Each subcommand lives in its own module, imported only when that subcommand runs,
so `mhpo-vl --help` stays fast and vLLM/DeepSpeed load only where they are needed.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

# name -> (module, one-line help). Modules are imported lazily.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mhpo_vl.commands.train", "RL-train a model from a YAML config (+ key=value overrides)"),
    "eval": ("mhpo_vl.commands.eval", "sample a model on evaluation suites and report Avg@k / Pass@k / majority vote"),
    "eval-run": ("mhpo_vl.commands.eval_run", "evaluate every checkpoint of a training run (best vs latest)"),
    "report": ("mhpo_vl.commands.report", "compare evaluated runs side by side"),
    "score": ("mhpo_vl.commands.score", "score existing model outputs with a suite's official rules (benchmark scorers)"),
    "data": ("mhpo_vl.commands.data", "look at datasets: `data show`, `data overlap`"),
    "plot": ("mhpo_vl.commands.plot", "plot training curves of one or several runs"),
    "study": ("mhpo_vl.commands.study", "compare losses x seeds x settings in one resumable command (summary + figures)"),
    "make-tiny-model": ("mhpo_vl.commands.make_tiny_model", "build a tiny random Qwen2.5-VL (or Qwen2) offline"),
    "plot-loss-shapes": ("mhpo_vl.commands.plot_loss_shapes", "draw psi, zeta and M(r) of the losses (paper Fig. 2/3)"),
    "plan-memory": ("mhpo_vl.commands.plan_memory", "the memory budget per GPU of a config: does it fit, and what would"),
    "export": ("mhpo_vl.commands.export", "merge a LoRA checkpoint into its base model as a Hugging Face folder"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mhpo-vl", description="RL post-training with MHPO (and GRPO, DAPO, GSPO, SAPO) for vision-language and text models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported; the others get a stub parser for --help listings.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--verbose", action="store_true",
                       help="show third-party logs live and full tracebacks on errors")
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - only user errors are caught; anything else is re-raised
        if not is_user_error(exc):
            raise
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else "  (--verbose shows the traceback)"
        print(f"mhpo-vl {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


def is_user_error(exc: BaseException) -> bool:
    """Errors caused by what the user gave (config, data, paths): one line on stderr, not a traceback.
    Imported here, not at the top, so `mhpo-vl --help` stays fast."""
    import yaml

    from mhpo_vl.collate import PromptTooLongError
    from mhpo_vl.config import ConfigError
    from mhpo_vl.images import DataError

    return isinstance(exc, (ConfigError, DataError, PromptTooLongError, yaml.YAMLError, FileNotFoundError,
                            IsADirectoryError, NotADirectoryError))


if __name__ == "__main__":
    sys.exit(main())
