"""`mhpo-vl eval --model M --suites mathvista,math500 --n 32 --output-dir D [...]` (``--benchmarks`` is the older
name of ``--suites``)

The flags become an :class:`mhpo_vl.evaluation.EvalConfig` and :func:`mhpo_vl.evaluation.run_evaluation` does the
rest: samples n responses per problem, grades them with the training grader, and writes per suite
``D/<suite>/responses.jsonl`` (one line per problem, appended batch by batch: a rerun resumes), ``run.json``
(the sampling settings; a rerun with other settings is refused), then ``D/summary.json`` and ``D/summary.md``.
See docs/evaluation.md.

``--config FILE`` reads option values from a YAML file whose keys are the flags' names without ``--``
(``max-tokens: 2048``; eval/paper_vl.yaml is the paper's protocol, eval/README.md documents the format). A value
comes from, lowest first: the built-in default < the file < a flag typed on the command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.config import ConfigError
from mhpo_vl.evaluation.config import DEFAULT_MAX_PROMPT_LENGTH, EvalConfig
from mhpo_vl.evaluation.suites import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_N,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    parse_suites,
)

# ------------------------------------------------------------------------------------------------ arguments --


def _key_value(flag: str):
    def parse(item: str) -> tuple[str, str]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{flag} expects NAME=VALUE, got {item!r}")
        return key.strip(), value.strip()

    return parse


def add_sampling_arguments(parser: argparse.ArgumentParser, suites_required: bool = True) -> None:
    """Everything except --model / --output-dir, shared with `eval-run` (`eval` takes --suites from --config too)."""
    parser.add_argument("--suites", "--benchmarks", dest="suites", required=suites_required,
                        help="comma-separated evaluation suites (mathvista, mathvision, mathverse, geometry3k, math500, "
                             "aime24, aime25, amc23, hmmt25) or groups of them (vl, text); --benchmarks: the older name"
                             + ("" if suites_required else "; required, here or in --config"))
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"samples per problem (default {DEFAULT_N}: Avg@32)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"default {DEFAULT_TEMPERATURE} (DAPO's Avg@32 protocol; see mhpo_vl/evaluation/suites.py)")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help=f"default {DEFAULT_TOP_P} (as --temperature)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"max response tokens (default {DEFAULT_MAX_TOKENS}: paper Sec. 4.1, Qwen2.5 models)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sampling seed")
    parser.add_argument("--source", type=_key_value("--source"), action="append", default=[], metavar="NAME=PATH",
                        help="local copy of a suite (file or folder in its original format); default: its hub name")
    parser.add_argument("--split", type=_key_value("--split"), action="append", default=[], metavar="NAME=SPLIT",
                        help="split of a suite (default: see mhpo_vl/evaluation/suites.py, e.g. mathvista=testmini)")
    parser.add_argument("--template", type=_key_value("--template"), action="append", default=[],
                        metavar="NAME=TEMPLATE", help="prompt template name or file for a suite (default: official)")
    parser.add_argument("--option", type=_key_value("--option"), action="append", default=[],
                        metavar="NAME.KEY=VALUE",
                        help="dataset adapter option, e.g. mathvista.require_images=false (value parsed as JSON)")
    parser.add_argument("--ids", type=_key_value("--ids"), action="append", default=[], metavar="NAME=ID,ID|@FILE",
                        help="evaluate only these problem ids of a suite (comma list, or @file with one id a line)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each suite")
    parser.add_argument("--no-images", action="store_true",
                        help="drop images: evaluate image suites on their text alone (needed for a text-only "
                             "model; the numbers are then not comparable with published ones)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default="vllm",
                        help="vllm (default) or hf (transformers generate: slow, for debugging)")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype: bfloat16 (default), float16, float32")
    parser.add_argument("--max-prompt-length", type=int, default=DEFAULT_MAX_PROMPT_LENGTH,
                        help=f"longest prompt in tokens, images included (default {DEFAULT_MAX_PROMPT_LENGTH}); longer "
                             "prompts are an error, never truncated")
    parser.add_argument("--min-pixels", type=int, default=None, help="image resize floor (default: the training default)")
    parser.add_argument("--max-pixels", type=int, default=None, help="image resize cap (default: the training default)")
    parser.add_argument("--system-prompt", default=None, help="system message (default: none / the chat template's)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="problems per sampling call; results are written after each (default 64)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM (default 0.9)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="vLLM context length (default: --max-prompt-length + --max-tokens)")
    parser.add_argument("--grader-workers", type=int, default=2, help="grading processes (default 2)")
    parser.add_argument("--grader-timeout", type=float, default=5.0, help="seconds per answer before it counts wrong")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete earlier results of these suites in the output dir instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options a --config file may set too (all of `eval`'s but --config and --verbose)."""
    parser.add_argument("--model", help="hub name or local folder of the model to evaluate; required, here or in "
                                        "--config")
    parser.add_argument("--label", default=None, help="name of the model in the tables (default: the folder name)")
    parser.add_argument("--output-dir", help="where responses and summaries go; required, here or in --config")
    add_sampling_arguments(parser, suites_required=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file of option values, keyed by the flags' names without '--' (e.g. "
                             "'max-tokens: 2048'); flags typed on the command line override it. The paper's "
                             "protocols: eval/paper_vl.yaml, eval/paper_text.yaml (see eval/README.md)")
    _add_options(parser)
    # Every option defaults to None so that resolve_options can tell a typed flag (which beats the file) from one
    # left out (which does not); the real defaults are filled in there.
    parser.set_defaults(**dict.fromkeys(_option_defaults()))


# ------------------------------------------------------------------------------------------ --config file --


def _option_defaults() -> dict[str, Any]:
    """{dest: built-in default} of every option a --config file may set: what an empty command line gives."""
    scratch = argparse.ArgumentParser(add_help=False)
    _add_options(scratch)
    return vars(scratch.parse_args([]))


def _file_key(dest: str) -> str:
    return dest.replace("_", "-")  # the flag's name: top_p -> top-p


def _mapping(path: Path, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping of suite names (e.g. {key}: {{mathvista: ...}}), "
                          f"got {value!r}")
    return value


def _text(path: Path, key: str, value: Any, comma_list: bool = False) -> str:
    """A value of the file as the text a flag would carry; a list only where the flag takes a comma list."""
    if isinstance(value, list) and comma_list:
        return ",".join(_text(path, key, item) for item in value)
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path}: {key}: expected a single value, got {value!r}")
    return str(value)


def _flag_words(path: Path, key: str, value: Any, default: Any) -> list[str]:
    """The command-line words that set ``key`` to ``value``, so the file goes through the very checks and
    conversions (types, choices, NAME=VALUE parsing) a typed flag does."""
    if isinstance(default, bool):  # a switch (--no-images): true sets it, false leaves the default
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {key}: expected true or false, got {value!r}")
        return [f"--{key}"] if value else []
    if key == "option":  # {suite: {adapter option: value}} -> --option SUITE.OPTION=JSON
        return [f"--option={name}.{option}={json.dumps(v)}"
                for name, options in _mapping(path, key, value).items()
                for option, v in _mapping(path, f"option: {name}", options).items()]
    if isinstance(default, list):  # per-suite flags (--source NAME=PATH, ...): {suite: value}
        return [f"--{key}={name}={_text(path, f'{key}: {name}', v, comma_list=key == 'ids')}"
                for name, v in _mapping(path, key, value).items()]
    return [f"--{key}={_text(path, key, value, comma_list=key == 'suites')}"]  # "=": a value may start with "-"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """{dest: value} of a --config file, every value converted and checked as the same flag on the command line
    would be. Unknown keys and bad values are ConfigErrors naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    defaults = _option_defaults()
    valid = {_file_key(dest): dest for dest in defaults}
    # A scratch parser that raises instead of exiting, with None defaults: it returns what the file sets.
    parser = argparse.ArgumentParser(prog=str(path), add_help=False, exit_on_error=False)
    _add_options(parser)
    parser.set_defaults(**dict.fromkeys(defaults))
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in valid:
            hint = (f" (did you mean {_file_key(str(key))!r}? keys are spelled as the flags, without '--')"
                    if _file_key(str(key)) in valid else "")
            raise ConfigError(f"{path}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
        if value is None:  # null: the built-in default, as if the key were absent
            continue
        dest = valid[key]
        try:
            parsed = parser.parse_args(_flag_words(path, key, value, defaults[dest]))
        except argparse.ArgumentError as exc:
            raise ConfigError(f"{path}: {key}: {exc.message}") from None
        if getattr(parsed, dest) is not None:
            values[dest] = getattr(parsed, dest)
    return values


def _merge_pairs(from_file: list[tuple[str, str]], typed: list[tuple[str, str]],
                 chosen: set[str]) -> list[tuple[str, str]]:
    """Per-suite NAME=VALUE pairs: a typed flag replaces the file's entry of the same NAME (suite, or suite.option);
    the file's entries for suites not chosen are dropped, so `--suites mathvista` can pick one suite of a
    protocol file that also configures others."""
    typed_names = {name for name, _ in typed}
    return [(name, value) for name, value in from_file
            if name not in typed_names and name.partition(".")[0] in chosen] + typed


def resolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every option not typed on the command line taken from the --config file, else its built-in
    default (argparse left such options at None, see add_arguments)."""
    defaults = _option_defaults()
    from_file = read_config_file(args.config) if args.config else {}
    resolved = vars(args).copy()
    for dest, default in defaults.items():
        if resolved[dest] is None:
            resolved[dest] = from_file.get(dest, default)
    for dest, flag in (("model", "--model"), ("output_dir", "--output-dir"), ("suites", "--suites")):
        if resolved[dest] is None:
            raise ConfigError(f"{flag} is required: give it on the command line or as "
                              f"'{_file_key(dest)}:' in the --config file")
    chosen = {suite.name for suite in parse_suites(resolved["suites"])}
    for dest, default in defaults.items():
        if isinstance(default, list):  # per-suite NAME=VALUE pairs: merged entry by entry, not replaced whole
            resolved[dest] = _merge_pairs(from_file.get(dest, []), getattr(args, dest) or [], chosen)
    return argparse.Namespace(**resolved)


# ------------------------------------------------------------------------------------ flags -> config --


def _parse_option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word: a string option


def _parse_ids(name: str, value: str) -> list[str]:
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"--ids {name}: file not found: {path}")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        ids = [part.strip() for part in value.split(",") if part.strip()]
    if not ids:
        raise ValueError(f"--ids {name}: no ids given")
    return ids


def _per_suite(flag: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"{flag} given twice for {name}")
        out[name] = value
    return out


def _options(pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for key, value in pairs:
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise ValueError(f"--option expects NAME.KEY=VALUE (e.g. mathvista.require_images=false), got {key}={value}")
        options.setdefault(name, {})[option] = _parse_option_value(value)
    return options


def eval_config(args: argparse.Namespace, model: str, output_dir: str | Path, label: str | None = None) -> EvalConfig:
    """The EvalConfig of the sampling flags (`add_sampling_arguments`) for ``model`` into ``output_dir``."""
    return EvalConfig(
        model=model, output_dir=output_dir, suites=args.suites, label=label or getattr(args, "label", None),
        n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
        sources=_per_suite("--source", args.source), splits=_per_suite("--split", args.split),
        templates=_per_suite("--template", args.template), options=_options(args.option),
        ids={name: _parse_ids(name, v) for name, v in _per_suite("--ids", args.ids).items()},
        limit=args.limit, use_images=not args.no_images, max_prompt_length=args.max_prompt_length,
        min_pixels=args.min_pixels, max_pixels=args.max_pixels, system_prompt=args.system_prompt,
        backend=args.backend, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, batch_size=args.batch_size, grader_workers=args.grader_workers,
        grader_timeout=args.grader_timeout, overwrite=args.overwrite, progress=not args.no_progress,
        verbose=getattr(args, "verbose", False),
    )


def run(args: argparse.Namespace) -> int:
    from mhpo_vl.evaluation import run_evaluation
    from mhpo_vl.evaluation.results import SUMMARY_JSON, SUMMARY_MD

    try:
        args = resolve_options(args)
        run_evaluation(eval_config(args, args.model, args.output_dir))
    except (ValueError, FileNotFoundError) as exc:
        print(f"mhpo-vl eval: error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.output_dir) / SUMMARY_MD).read_text())
    print(f"wrote {Path(args.output_dir) / SUMMARY_JSON} and per-suite responses under {args.output_dir}/")
    return 0
