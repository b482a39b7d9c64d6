"""`mhpo-vl export CHECKPOINT OUT [--base MODEL]`: a LoRA checkpoint (adapter_model.safetensors + adapter_config.json)
merged into its base model, written as a plain Hugging Face folder (model in the base's dtype + processor) that
transformers and vLLM load: W + (alpha / r) B A for each adapted linear (mhpo_vl.models.lora.export_merged).

A full fine-tuning checkpoint needs no export: it already is such a folder."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a LoRA run's checkpoint folder, e.g. runs/x/checkpoints/step_000100")
    parser.add_argument("out", type=Path, help="folder to write the merged model and processor into (must not exist "
                        "or be empty)")
    parser.add_argument("--base", default=None, help="the base model (hub name or folder); default: the adapter's "
                        "base_model_name_or_path, i.e. the run's model.name_or_path")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.models.lora import LoraError, export_merged

    if not args.checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder {args.checkpoint} does not exist")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"mhpo-vl export: error: {args.out} exists and is not an empty folder; choose a new one", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        base, merged = export_merged(args.checkpoint, args.out, base=args.base)
    except LoraError as exc:
        print(f"mhpo-vl export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {base} with the adapter of {args.checkpoint} merged into {merged} linear weights "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
