"""`mhpo-vl data show` and `mhpo-vl data overlap`: look at datasets exactly as training and evaluation will see them.

    mhpo-vl data show geometry3k --source data/geometry3k --split train --limit 5 --template reason_boxed
    mhpo-vl data show my_dataset.yaml                       # a column mapping: no code
    mhpo-vl data show mathvista --source testmini.json --option require_images=false
    mhpo-vl data overlap geometry3k:path/to/geometry3k@test mathvista:path/to/testmini.json

`show` prints one JSON object per sample (the canonical fields, image paths or "<in-memory WxH>", and the rendered
prompt) after opening and fully decoding every image; a bad row stops it with the file, row and field named
(exit 1), unless --skip-bad, which lists every skipped row on stderr.
`overlap` takes two dataset specs NAME[:SOURCE][@SPLIT] and prints one JSON object per near-duplicate pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_DATA_ERROR = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="{show,overlap}")
    sub.required = True

    show = sub.add_parser("show", help="print canonical samples as JSON lines, decoding every image")
    show.add_argument("name", help="dataset name (geometry3k, mathvista, ...) or a column-mapping .yaml/.json file")
    show.add_argument("--source", default=None, help="local file or folder in the dataset's format (default: HF hub)")
    show.add_argument("--split", default=None)
    show.add_argument("--limit", type=int, default=None, help="print at most N samples")
    show.add_argument("--template", default="reason_boxed", help="prompt template name or file (default reason_boxed)")
    show.add_argument("--skip-bad", action="store_true", help="skip bad rows (each one is listed on stderr)")
    show.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="adapter option, e.g. require_images=false, n=100 (repeatable; values parsed as YAML)")
    show.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                      help="import a module (dotted name or .py file) that registers extra datasets (repeatable)")

    overlap = sub.add_parser("overlap", help="near-duplicate problems between two datasets (text and image hash)")
    overlap.add_argument("train", help="NAME[:SOURCE][@SPLIT], e.g. geometry3k:data/geometry3k@train")
    overlap.add_argument("eval", help="NAME[:SOURCE][@SPLIT], e.g. mathvista:data/mathvista/testmini.json")
    overlap.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE")
    overlap.add_argument("--eval-option", action="append", default=[], metavar="KEY=VALUE")
    overlap.add_argument("--text-threshold", type=float, default=None, help="min trigram Jaccard of the questions")
    overlap.add_argument("--hash-distance", type=int, default=None, help="max dHash bit distance (of 256)")
    overlap.add_argument("--skip-bad", action="store_true")
    overlap.add_argument("--import", dest="plugins", action="append", default=[], metavar="MODULE_OR_FILE")
    for nested in (show, overlap):  # `data show ... --verbose` too; SUPPRESS keeps a `data --verbose show` value
        nested.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="show third-party logs live and full tracebacks on errors")


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.datasets.base import import_plugins
    from mhpo_vl.images import DataError

    try:
        import_plugins(args.plugins)
        if args.data_command == "show":
            return _show(args)
        return _overlap(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except ValueError as exc:  # unknown dataset / option / template: a usage problem
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def parse_options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option {pair!r} must be KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """NAME[:SOURCE][@SPLIT] -> (name, source, split)."""
    body, _, split = spec.rpartition("@") if "@" in spec else (spec, "", "")
    name, _, source = body.partition(":")
    return name, (source or None), (split or None)


def sample_record(sample, prompt: str | None = None) -> dict[str, Any]:
    from mhpo_vl.images import describe_image

    record = {
        "id": sample.id, "source": sample.source, "split": sample.split, "question": sample.question,
        "answer": sample.answer, "answer_type": sample.answer_type, "choices": sample.choices,
        "precision": sample.precision, "unit": sample.unit,
        "images": [describe_image(image) for image in sample.images], "metadata": sample.metadata,
    }
    if prompt is not None:
        record["prompt"] = prompt
    return record


def _show(args: argparse.Namespace) -> int:
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.datasets.base import SkippedRow
    from mhpo_vl.images import DataError, open_image
    from mhpo_vl.prompts import get_template

    template = get_template(args.template)
    samples = load_dataset(args.name, args.source, args.split, skip_bad=args.skip_bad, **parse_options(args.option))
    shown, decoded, skipped = 0, 0, list(samples.skipped)
    for sample in samples:
        if args.limit is not None and shown >= args.limit:
            break
        try:
            for image in sample.images:
                open_image(image, file=image if isinstance(image, str) else None, row=sample.id, field="images")
                decoded += 1
        except DataError as exc:
            if not args.skip_bad:
                raise
            skipped.append(SkippedRow(exc.file, exc.row, exc.field, exc.reason))
            print(f"[mhpo-vl data] skipped {sample.source}/{sample.id}: {exc}", file=sys.stderr)
            continue
        print(json.dumps(sample_record(sample, template.render(sample)), ensure_ascii=False, default=str))
        shown += 1
    distinct = len({sample.question for sample in samples})  # repeats make a split smaller than its row count
    print(f"[mhpo-vl data] {args.name}: shown {shown} of {len(samples)} sample(s) ({distinct} distinct question text(s)), "
          f"{decoded} image(s) decoded, {len(skipped)} row(s) skipped", file=sys.stderr)
    return 0


def _overlap(args: argparse.Namespace) -> int:
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.datasets.overlap import DEFAULT_HASH_DISTANCE, DEFAULT_TEXT_THRESHOLD, find_overlaps

    loaded = []
    for spec, options in ((args.train, args.train_option), (args.eval, args.eval_option)):
        name, source, split = parse_spec(spec)
        loaded.append(load_dataset(name, source, split, skip_bad=args.skip_bad, **parse_options(options)))
    train, eval_ = loaded
    overlaps = find_overlaps(
        train, eval_,
        text_threshold=DEFAULT_TEXT_THRESHOLD if args.text_threshold is None else args.text_threshold,
        hash_distance=DEFAULT_HASH_DISTANCE if args.hash_distance is None else args.hash_distance,
    )
    for overlap in overlaps:
        print(json.dumps(overlap.as_record(), ensure_ascii=False))
    kinds: dict[str, int] = {}
    for overlap in overlaps:
        kinds[overlap.kind] = kinds.get(overlap.kind, 0) + 1
    affected = len({id(o.eval) for o in overlaps})
    detail = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "none"
    print(f"[mhpo-vl data] overlap: {affected} of {len(eval_)} eval problem(s) have a near-duplicate among "
          f"{len(train)} train problem(s); pairs by kind: {detail}", file=sys.stderr)
    return 0
