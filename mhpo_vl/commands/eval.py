"""`mhpo-vl eval --model M --benchmarks mathvista,math500 --n 32 --output-dir D [...]`

Samples n responses per problem, grades them with the training grader, and writes per benchmark
``D/<benchmark>/responses.jsonl`` (one line per problem, appended batch by batch: a rerun resumes), ``run.json``
(the sampling settings; a rerun with other settings is refused), then ``D/summary.json`` and ``D/summary.md``.
See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.atomic_io import write_durably
from mhpo_vl.benchmarks import (
    DEFAULT_MAX_TOKENS, DEFAULT_N, DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, Benchmark, parse_benchmark_list,
)

DEFAULT_MAX_PROMPT_LENGTH = 8192  # MathVista/MathVerse: question + up to ~5.4k image tokens at max_pixels 4194304


# ------------------------------------------------------------------------------------------------ arguments --


def _key_value(flag: str):
    def parse(item: str) -> tuple[str, str]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{flag} expects NAME=VALUE, got {item!r}")
        return key.strip(), value.strip()

    return parse


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Everything except --model / --output-dir, shared with `eval-run`."""
    parser.add_argument("--benchmarks", required=True,
                        help="comma-separated benchmark names (mathvista, mathvision, mathverse, geometry3k, math500, "
                             "aime24, aime25, amc23, hmmt25) or suites (vl, text)")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"samples per problem (default {DEFAULT_N}: Avg@32)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"default {DEFAULT_TEMPERATURE} (DAPO's Avg@32 protocol; see mhpo_vl/benchmarks.py)")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help=f"default {DEFAULT_TOP_P} (as --temperature)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"max response tokens (default {DEFAULT_MAX_TOKENS}: paper Sec. 4.1, Qwen2.5 models)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sampling seed")
    parser.add_argument("--source", type=_key_value("--source"), action="append", default=[], metavar="NAME=PATH",
                        help="local copy of a benchmark (file or folder in its original format); default: its hub name")
    parser.add_argument("--split", type=_key_value("--split"), action="append", default=[], metavar="NAME=SPLIT",
                        help="split of a benchmark (default: see mhpo_vl/benchmarks.py, e.g. mathvista=testmini)")
    parser.add_argument("--template", type=_key_value("--template"), action="append", default=[],
                        metavar="NAME=TEMPLATE", help="prompt template name or file for a benchmark (default: official)")
    parser.add_argument("--option", type=_key_value("--option"), action="append", default=[],
                        metavar="NAME.KEY=VALUE",
                        help="dataset adapter option, e.g. mathvista.require_images=false (value parsed as JSON)")
    parser.add_argument("--ids", type=_key_value("--ids"), action="append", default=[], metavar="NAME=ID,ID|@FILE",
                        help="evaluate only these problem ids of a benchmark (comma list, or @file with one id a line)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    parser.add_argument("--no-images", action="store_true",
                        help="drop images: evaluate image benchmarks on their text alone (needed for a text-only "
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
                        help="delete earlier results of these benchmarks in the output dir instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub name or local folder of the model to evaluate")
    parser.add_argument("--label", default=None, help="name of the model in the tables (default: the folder name)")
    parser.add_argument("--output-dir", required=True, help="where responses and summaries go")
    add_sampling_arguments(parser)


# ------------------------------------------------------------------------------------------- the plan --


@dataclass
class BenchmarkPlan:
    """One benchmark as this run evaluates it: where it comes from, how it is prompted, which problems."""

    benchmark: Benchmark
    source: str | None
    split: str | None
    template: str
    options: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None
    samples: list = field(default_factory=list)  # the selected Samples, once loaded
    dataset_index: dict = field(default_factory=dict)  # id -> position in the loaded split (selected or not)

    @property
    def name(self) -> str:
        return self.benchmark.name


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


def build_plans(args: argparse.Namespace) -> list[BenchmarkPlan]:
    """Check every per-benchmark flag against the chosen benchmarks before anything heavy starts."""
    benchmarks = parse_benchmark_list(args.benchmarks)
    chosen = {b.name for b in benchmarks}

    def per_benchmark(flag: str, pairs: list[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in pairs:
            if name not in chosen:
                raise ValueError(f"{flag} {name}=...: {name!r} is not among --benchmarks ({', '.join(sorted(chosen))})")
            if name in out:
                raise ValueError(f"{flag} given twice for {name}")
            out[name] = value
        return out

    sources = per_benchmark("--source", args.source)
    splits = per_benchmark("--split", args.split)
    templates = per_benchmark("--template", args.template)
    ids = {name: _parse_ids(name, v) for name, v in per_benchmark("--ids", args.ids).items()}
    options: dict[str, dict[str, Any]] = {}
    for key, value in args.option:
        name, dot, option = key.partition(".")
        if not dot or not option:
            raise ValueError(f"--option expects NAME.KEY=VALUE (e.g. mathvista.require_images=false), got {key}={value}")
        per_benchmark("--option", [(name, value)])
        options.setdefault(name, {})[option] = _parse_option_value(value)

    for name, source in sources.items():
        if not source.startswith("hf:") and not Path(source).exists():
            raise FileNotFoundError(f"--source {name}={source}: no such file or folder")
    from mhpo_vl.prompts import get_template

    plans = []
    training_template = getattr(args, "training_template", None)  # set by with_run_defaults
    for bench in benchmarks:
        default = training_template if training_template and bench.template == TRAINING_TEMPLATE else bench.template
        template = templates.get(bench.name, default)
        get_template(template)  # unknown name / missing file: an error now, not after the engine started
        plans.append(BenchmarkPlan(
            benchmark=bench, source=sources.get(bench.name), split=splits.get(bench.name, bench.split),
            template=template, options={**bench.dataset_options, **options.get(bench.name, {})}, ids=ids.get(bench.name),
        ))
    return plans


def load_plan_samples(plan: BenchmarkPlan, limit: int | None) -> None:
    from mhpo_vl.datasets import load_dataset

    samples = list(load_dataset(plan.benchmark.dataset, plan.source, plan.split, **plan.options))
    plan.dataset_index = {s.id: i for i, s in enumerate(samples)}
    if plan.ids is not None:
        by_id = {s.id: s for s in samples}
        unknown = [i for i in plan.ids if i not in by_id]
        if unknown:
            raise ValueError(f"--ids {plan.name}: {len(unknown)} id(s) not in the benchmark "
                             f"({plan.source or 'hub'}, split {plan.split}): {', '.join(unknown[:20])}")
        wanted = set(plan.ids)
        samples = [s for s in samples if s.id in wanted]  # dataset order, whatever order the ids came in
    if limit is not None:
        samples = samples[:limit]
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:  # the responses file is keyed by id
            raise ValueError(f"{plan.name}: problem id {sample.id!r} occurs twice in {plan.source or 'the hub copy'}")
        seen.add(sample.id)
    plan.samples = samples


def check_images(plans: list[BenchmarkPlan], model_is_vision: bool, no_images: bool, model: str) -> None:
    for plan in plans:
        with_images = sum(bool(s.images) for s in plan.samples)
        if no_images:
            continue
        if with_images and not model_is_vision:
            raise ValueError(f"benchmark {plan.name}: {with_images} problem(s) have images but {model} is a text-only "
                             "model; pass --no-images to evaluate it on the question text alone, or leave it out")
        missing = [s.id for s in plan.samples if s.metadata.get("image_missing")]
        if missing:
            raise ValueError(f"benchmark {plan.name}: {len(missing)} selected problem(s) have no image on disk "
                             f"(e.g. {', '.join(missing[:5])}); choose problems with --ids, or pass --no-images")


def pixel_budget(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels): the flags, else the run's own (a checkpoint of a training run, see
    ``with_run_defaults``; None = the processor's own limits), else the training defaults, so a model sees images as
    it was trained."""
    from mhpo_vl.config import DataConfig

    defaults, from_run = DataConfig(), getattr(args, "run_pixels", {})
    return tuple(getattr(args, key) if getattr(args, key) is not None
                 else from_run[key] if key in from_run else getattr(defaults, key)
                 for key in ("min_pixels", "max_pixels"))


TRAINING_TEMPLATE = "reason_boxed"  # benchmarks without an official prompt use the training prompt (benchmarks.py)


def checkpoint_run_config(model: str) -> Path | None:
    """RUN/config.yaml when ``model`` is a checkpoint folder of a training run (RUN/checkpoints/NAME)."""
    path = Path(model)
    config = path.parent.parent / "config.yaml"
    return config if path.is_dir() and path.parent.name == "checkpoints" and config.is_file() else None


def with_run_defaults(args: argparse.Namespace, model: str) -> argparse.Namespace:
    """``args`` completed from the training run ``model`` is a checkpoint of: its image limits
    (data.min_pixels/max_pixels), system prompt and, for benchmarks that use the training prompt, its template,
    wherever the flags leave them unset; what was taken is said on stderr. Other models: ``args`` unchanged.
    data.max_prompt_length is not taken: it bounds the training prompts, and a benchmark's prompts may be longer."""
    import copy

    import yaml

    from mhpo_vl.prompts import get_template

    config = checkpoint_run_config(model)
    if config is None:
        return args
    try:
        data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError) as exc:
        raise ValueError(f"{config}: not a readable run config ({exc}); pass --min-pixels/--max-pixels") from None
    args, taken = copy.copy(args), []
    args.run_pixels = {key: data.get(key) for key in ("min_pixels", "max_pixels")
                       if getattr(args, key) is None and key in data}
    own = "null (the processor's own)"
    taken += [f"data.{key}={own if value is None else value}" for key, value in args.run_pixels.items()]
    if args.system_prompt is None and data.get("system_prompt") is not None:
        args.system_prompt = data["system_prompt"]
        taken.append("data.system_prompt")
    template = data.get("template")
    if template and template != TRAINING_TEMPLATE:
        try:
            get_template(template)
            args.training_template = template
            taken.append(f"data.template={template} (for benchmarks that use the training prompt)")
        except (ValueError, OSError) as exc:
            print(f"[mhpo-vl eval] the run's template {template!r} is not usable here ({exc}); using "
                  f"{TRAINING_TEMPLATE}", file=sys.stderr)
    if taken:
        print(f"[mhpo-vl eval] {model} is a checkpoint of the run {config.parent}: using its {', '.join(taken)} "
              "(flags override)", file=sys.stderr)
    return args


def run_settings(plan: BenchmarkPlan, args: argparse.Namespace, model: str, use_images: bool) -> dict[str, Any]:
    """What the samples in one responses file depend on: a rerun must match it to resume."""
    return {
        "model": model, "benchmark": plan.name, "dataset": plan.benchmark.dataset, "source": plan.source,
        "split": plan.split, "template": plan.template, "options": plan.options, "n": args.n,
        "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed,
        "dtype": args.dtype, "use_images": use_images, "pixels": list(pixel_budget(args)) if use_images else None,
        "system_prompt": args.system_prompt,
    }


# ------------------------------------------------------------------------------------- model and sampler --


def model_is_vision(model: str) -> bool:
    local_config = Path(model) / "config.json"
    if local_config.is_file():  # no transformers import (seconds) when a rerun has nothing left to sample
        try:
            return json.loads(local_config.read_text()).get("vision_config") is not None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{local_config}: corrupt JSON ({exc})") from None
    from transformers import AutoConfig

    from mhpo_vl.model import is_vision_config

    return is_vision_config(AutoConfig.from_pretrained(model))


def load_processor(model: str, is_vision: bool):
    from transformers import AutoProcessor, AutoTokenizer

    return AutoProcessor.from_pretrained(model) if is_vision else AutoTokenizer.from_pretrained(model)


def _torch_dtype(name: str):
    import torch

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"--dtype must be one of {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def make_sampler(args: argparse.Namespace, model: str):
    """(sampler, processor). One engine serves every benchmark of the call."""
    if args.backend == "hf":
        from mhpo_vl.model import load_policy
        from mhpo_vl.rollout.hf_sampler import HFSampler

        policy = load_policy(model, dtype=_torch_dtype(args.dtype), freeze_vision=False)
        policy.model.eval()
        return HFSampler(policy.model, policy.processor), policy.processor
    from mhpo_vl.rollout.vllm_sampler import VLLMSampler

    _torch_dtype(args.dtype)  # same names for both backends
    max_model_len = args.max_model_len or (args.max_prompt_length + args.max_tokens)
    sampler = VLLMSampler(model, max_model_len=max_model_len, dtype=args.dtype, seed=args.seed,
                          gpu_memory_utilization=args.gpu_memory_utilization, enable_sleep_mode=False)
    return sampler, None


# ----------------------------------------------------------------------------------------- evaluation --


def evaluate(args: argparse.Namespace, model: str, output_dir: str | Path, label: str | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on the benchmarks in ``args``; resumable; returns (and writes) the summary. The output
    directory is locked meanwhile: a second evaluation into it is refused with this one's pid (RunDirError)."""
    from mhpo_vl.run_dir import DirectoryLock

    with DirectoryLock(output_dir, "evaluation"):
        return _evaluate(args, model, output_dir, label)


def _evaluate(args: argparse.Namespace, model: str, output_dir: str | Path, label: str | None) -> dict[str, Any]:
    from mhpo_vl.evaluate import (
        RESPONSES_FILE, SUMMARY_JSON, SUMMARY_MD, ResponsesFile, breakdown, check_run_settings, macro_average,
        summarize_problems, summary_markdown,
    )

    if args.n < 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise ValueError("--n, --max-tokens and --batch-size must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    out = Path(output_dir)
    args = with_run_defaults(args, model)
    plans = build_plans(args)
    for plan in plans:
        load_plan_samples(plan, args.limit)
    is_vision = model_is_vision(model)
    check_images(plans, is_vision, args.no_images, model)
    use_images = is_vision and not args.no_images

    # Read what is already done (a corrupt file is an error now, before any sampling).
    done: dict[str, dict] = {}
    for plan in plans:
        bench_dir = out / plan.name
        if args.overwrite and bench_dir.exists():
            shutil.rmtree(bench_dir)
        check_run_settings(bench_dir, run_settings(plan, args, model, use_images))
        existing = ResponsesFile(bench_dir / RESPONSES_FILE).load()
        known = {s.id for s in plan.samples}
        strangers = [i for i in existing if i not in plan.dataset_index]
        if strangers:
            raise ValueError(f"{bench_dir / RESPONSES_FILE}: {len(strangers)} problem id(s) are not in the benchmark "
                             f"(e.g. {', '.join(strangers[:5])}): the file belongs to another dataset")
        short = [i for i, r in existing.items() if i in known and r.n != args.n]
        if short:
            raise ValueError(f"{bench_dir / RESPONSES_FILE}: problem {short[0]!r} has {existing[short[0]].n} responses, "
                             f"expected --n {args.n}")
        done[plan.name] = existing

    todo = {plan.name: [s for s in plan.samples if s.id not in done[plan.name]] for plan in plans}
    timing: dict[str, float] = {}
    if any(todo.values()):
        from mhpo_vl import console

        # vLLM's and the libraries' output goes to <output_dir>/logs/eval.log; the progress bars stay visible.
        with console.capture(console.log_path(out, "eval"), verbose=getattr(args, "verbose", False)):
            timing = _sample_and_grade(args, model, plans, todo, done, out, use_images, is_vision)

    benchmarks: dict[str, Any] = {}
    for plan in plans:
        results = [done[plan.name][s.id] for s in plan.samples]
        metrics = summarize_problems(results)
        benchmarks[plan.name] = {
            "metrics": metrics,
            "breakdowns": {f: breakdown(results, f) for f in plan.benchmark.breakdowns},
            "source": plan.source, "split": plan.split, "template": plan.template,
            "selection": {"ids": plan.ids is not None, "limit": args.limit},
        }
    summary = {
        "model": model,
        "model_label": label or getattr(args, "label", None) or Path(model.rstrip("/")).name or model,
        "sampling": {"n": args.n, "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens,
                     "seed": args.seed, "backend": args.backend, "dtype": args.dtype, "use_images": use_images},
        "benchmarks": benchmarks,
        "average": macro_average(b["metrics"]["avg"] for b in benchmarks.values()),
        "timing_seconds": timing,  # this invocation only (0 entries when everything was already done)
    }
    out.mkdir(parents=True, exist_ok=True)
    write_durably(out / SUMMARY_JSON, json.dumps(summary, indent=1, ensure_ascii=False))
    write_durably(out / SUMMARY_MD, summary_markdown(summary))
    return summary


def _sample_and_grade(args, model, plans, todo, done, out, use_images, is_vision) -> dict[str, float]:
    from mhpo_vl import console
    from mhpo_vl.collate import PromptEncoder, check_pixels_match_processor
    from mhpo_vl.evaluate import RESPONSES_FILE, ResponsesFile
    from mhpo_vl.grading import Grader
    from mhpo_vl.prompts import get_template
    from mhpo_vl.rollout.sampling import SamplingConfig

    started = time.perf_counter()
    min_pixels, max_pixels = pixel_budget(args)
    processor = None
    if args.backend == "vllm":
        processor = load_processor(model, is_vision)
        if use_images:  # before the engine starts (minutes): vLLM resizes every image again with the model's limits
            check_pixels_match_processor(processor.image_processor, min_pixels, max_pixels, model)
    sampler, hf_processor = make_sampler(args, model)
    processor = processor or hf_processor
    timing = {"engine_start": time.perf_counter() - started}
    try:
        with Grader(num_workers=args.grader_workers, timeout_s=args.grader_timeout) as grader:
            for plan in plans:
                pending = todo[plan.name]
                if not pending:
                    continue
                bench_started = time.perf_counter()
                template = get_template(plan.template)
                encoder = PromptEncoder(
                    processor, template, max_prompt_length=args.max_prompt_length, use_images=use_images,
                    min_pixels=min_pixels, max_pixels=max_pixels,
                    system_prompt=args.system_prompt, drop_images=args.no_images,
                )
                file = ResponsesFile(out / plan.name / RESPONSES_FILE)
                bar = console.progress(total=len(plan.samples), initial=len(plan.samples) - len(pending),
                                       unit="problem", desc=plan.name, disable=args.no_progress)
                for start in range(0, len(pending), args.batch_size):
                    batch = pending[start : start + args.batch_size]
                    prompts = encoder.encode(batch)
                    # The samplers seed prompt i of a call with seed + i*n: starting each call at the dataset position
                    # of its first problem gives the problem at position d the seed seed + d*n whatever the batching
                    # when the pending problems are consecutive (a whole benchmark, a --limit prefix, a resumed tail),
                    # so a resumed run draws what the uninterrupted one would have (on a batch-invariant engine).
                    first = plan.dataset_index[batch[0].id]
                    config = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                            max_tokens=args.max_tokens, seed=args.seed + first * args.n)
                    groups = sampler.generate(prompts, config)
                    if len(groups) != len(batch) or any(len(g) != args.n for g in groups):
                        raise RuntimeError(f"sampler returned {[len(g) for g in groups]} completions for "
                                           f"{len(batch)} prompts, expected {args.n} each")
                    flat_samples = [s for s, g in zip(batch, groups) for _ in g]
                    verdicts = grader.grade(flat_samples, [c.text for g in groups for c in g])
                    results = problem_results(batch, groups, verdicts, template)
                    file.append(results)  # on disk before the next batch starts
                    for result in results:
                        done[plan.name][result.id] = result
                    bar.update(len(batch))
                bar.close()
                timing[plan.name] = time.perf_counter() - bench_started
    finally:
        sampler.close()  # free the engine before the next one starts (eval-run: one per checkpoint)
    return timing


def problem_results(batch, groups, verdicts, template) -> list:
    """One ProblemResult per sample from its completions and their verdicts (flat, in group order)."""
    from mhpo_vl.evaluate import ProblemResult

    results, start = [], 0
    for sample, group in zip(batch, groups):
        mine = verdicts[start : start + len(group)]
        start += len(group)
        results.append(ProblemResult(
            id=sample.id, question=sample.question, answer=sample.answer, answer_type=sample.answer_type,
            choices=sample.choices, prompt=template.render(sample),
            responses=[c.text for c in group], finish_reasons=[c.finish_reason for c in group],
            num_tokens=[len(c.token_ids) for c in group], predictions=[v.prediction for v in mine],
            correct=[bool(v.correct) for v in mine], format_ok=[bool(v.format_ok) for v in mine],
            timed_out=[bool(v.timed_out) for v in mine], errors=[v.error for v in mine], metadata=sample.metadata,
        ))
    return results


def run(args: argparse.Namespace) -> int:
    try:
        summary = evaluate(args, args.model, args.output_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mhpo-vl eval: error: {exc}", file=sys.stderr)
        return 2
    from mhpo_vl.evaluate import SUMMARY_MD

    print((Path(args.output_dir) / SUMMARY_MD).read_text())
    print(f"wrote {Path(args.output_dir) / 'summary.json'} and per-benchmark responses under {args.output_dir}/")
    del summary
    return 0
