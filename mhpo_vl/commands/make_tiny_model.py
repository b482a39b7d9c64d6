"""`mhpo-vl make-tiny-model OUT [--family qwen2_5_vl|qwen3_vl|qwen2] [--text-only] [--vocab qwen|small] [--seed S]
[--size key=value ...]`: a random-weight model, offline. The default family is Qwen2.5-VL (`--text-only` = `--family
qwen2`); the default tokenizer is the real Qwen one (Qwen3's for qwen3_vl); `--vocab small` is the fast ~2k-token BPE."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

FAMILIES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL", "qwen2": "Qwen2 text"}


def _parse_size(item: str) -> tuple[str, int | float]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--size expects key=value (e.g. hidden_size=256), got {item!r}")
    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--size {key}: {value!r} is not a number") from None
    return key, number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="folder to write the model, tokenizer and processor into")
    parser.add_argument("--family", choices=FAMILIES, default=None,
                        help="architecture: qwen2_5_vl (default), qwen3_vl (Qwen3-VL, its tokenizer and chat template), "
                        "qwen2 (text-only, same as --text-only)")
    parser.add_argument("--text-only", action="store_true", help="a Qwen2 causal LM instead of a Qwen2.5-VL")
    parser.add_argument(
        "--vocab",
        choices=("qwen", "small"),
        default="qwen",
        help="qwen: the real Qwen2.5-VL tokenizer (151,665 tokens, 151,936 embedding rows); small: a ~2k-token BPE "
        "trained offline (much cheaper lm_head; what the CPU demo uses)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed (same seed -> same bytes)")
    parser.add_argument(
        "--size",
        type=_parse_size,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an architecture size (repeatable), e.g. --size hidden_size=256 --size num_hidden_layers=4; "
        "keys are the fields of mhpo_vl.models.tiny.TinySizes",
    )


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.models.tiny import build_tiny_qwen3_vl_model, build_tiny_text_model, build_tiny_vl_model

    start = time.perf_counter()
    if args.text_only and args.family not in (None, "qwen2"):
        raise SystemExit(f"--text-only builds a qwen2 model; it cannot be combined with --family {args.family}")
    family = "qwen2" if args.text_only else (args.family or "qwen2_5_vl")
    build = {"qwen2_5_vl": build_tiny_vl_model, "qwen3_vl": build_tiny_qwen3_vl_model,
             "qwen2": build_tiny_text_model}[family]
    sizes = dict(args.size)
    if "vocab" in sizes:
        raise SystemExit("choose the tokenizer with --vocab, not --size vocab=...")
    out = build(args.out, seed=args.seed, vocab=args.vocab, **sizes)
    size_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    kind = FAMILIES[family]
    print(f"wrote tiny {kind} model ({args.vocab} vocabulary) to {out} ({size_mb:.1f} MB, "
          f"{time.perf_counter() - start:.1f} s)")
    return 0
