"""The evaluation pipeline: sample -> grade -> metrics -> files, one implementation for `mhpo-vl eval`, `eval-run`
and the trainer's validation.

- :func:`sample_and_grade`: the one sample-then-grade step (n completions per prompt, each graded by the training
  grader). Everything below calls it.
- :func:`run_evaluation`: a model on evaluation suites (an :class:`EvalConfig`), resumable, into
  ``<output_dir>/<suite>/responses.jsonl`` + ``summary.json`` / ``summary.md``; returns the summary. Takes an
  already-built sampler (the trainer's colocated engine) or builds one (``mhpo_vl.rollout.factory.make_sampler``).
  A rerun grades again the responses of earlier runs whose grading failed (not the timeouts, not the ones graded).
- :func:`run_validation`: the trainer's held-out check on in-memory prompts with its own sampler and grader; returns
  ``val/accuracy``, ``val/format_rate``, ``val/response_length``, ``val/num_answers``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhpo_vl.evaluation.config import EvalConfig
from mhpo_vl.evaluation.plan import (
    SuitePlan,
    build_plans,
    check_images,
    load_plan_samples,
    load_processor,
    model_is_vision,
    pixel_budget,
    run_settings,
    with_run_defaults,
)
from mhpo_vl.runs.atomic_io import write_durably


@dataclass
class GradedGroup:
    """One prompt's completions and their verdicts, in sampling order."""

    sample: Any  # mhpo_vl.types.Sample
    completions: list  # list[Completion]
    verdicts: list  # list[Verdict]


def sample_and_grade(sampler, prompts: Sequence, sampling, grader) -> list[GradedGroup]:
    """``sampling.n`` completions per EncodedPrompt from ``sampler``, each graded by ``grader`` (``grade(samples,
    responses) -> verdicts``, e.g. :class:`mhpo_vl.grading.Grader`)."""
    groups = sampler.generate(list(prompts), sampling)
    if len(groups) != len(prompts) or any(len(g) != sampling.n for g in groups):
        raise RuntimeError(f"sampler returned {[len(g) for g in groups]} completions for {len(prompts)} prompts, "
                           f"expected {sampling.n} each")
    samples = [p.sample for p, g in zip(prompts, groups) for _ in g]
    verdicts = grader.grade(samples, [c.text for g in groups for c in g])
    out, start = [], 0
    for prompt, group in zip(prompts, groups):
        out.append(GradedGroup(prompt.sample, list(group), verdicts[start : start + len(group)]))
        start += len(group)
    return out


# ------------------------------------------------------------------------------------- training validation --


def run_validation(sampler, prompts: Sequence, sampling, grader,
                   all_reduce_sum: Callable[[Iterable[float]], list[float]] | None = None,
                   keep: Callable[[list[GradedGroup]], None] | None = None) -> dict[str, float]:
    """Avg@k on held-out prompts (k = ``sampling.n``): accuracy and format rate over every answer of every process
    (``all_reduce_sum``: the trainer's ``Runtime.all_reduce_sum``; None = this process alone), this process's mean
    response length in tokens, and the number of answers. ``keep``: given the graded groups, in prompt order (the
    trainer logs the first few: ``trainer.val_samples_to_log``)."""
    groups = sample_and_grade(sampler, prompts, sampling, grader)
    if keep is not None:
        keep(groups)
    return validation_metrics(groups, all_reduce_sum)


def validation_metrics(groups: Sequence[GradedGroup],
                       all_reduce_sum: Callable[[Iterable[float]], list[float]] | None = None) -> dict[str, float]:
    verdicts = [v for g in groups for v in g.verdicts]
    local = [sum(v.correct for v in verdicts), sum(v.format_ok for v in verdicts), len(verdicts)]
    correct, fmt, n = all_reduce_sum(local) if all_reduce_sum is not None else local
    lengths = [len(c.token_ids) for g in groups for c in g.completions]
    return {"val/accuracy": correct / max(n, 1), "val/format_rate": fmt / max(n, 1),
            "val/response_length": sum(lengths) / len(lengths) if lengths else 0.0, "val/num_answers": n}


# ------------------------------------------------------------------------------------ evaluation suites --


def run_evaluation(config: EvalConfig, sampler=None, processor=None) -> dict[str, Any]:
    """Evaluate ``config.model`` on ``config.suites``; resumable; returns (and writes) the summary. The output
    directory is locked meanwhile: a second evaluation into it is refused with this one's pid (RunDirError).
    ``sampler``: use it instead of starting one (it is not closed here); ``processor``: its processor/tokenizer for
    the prompts (default: the sampler's own, else loaded from ``config.model``)."""
    from mhpo_vl.runs.run_dir import DirectoryLock

    with DirectoryLock(config.output_dir, "evaluation"):
        return _run_evaluation(config, sampler, processor)


def _run_evaluation(config: EvalConfig, sampler, processor) -> dict[str, Any]:
    config.check()
    config = with_run_defaults(config)
    out = Path(config.output_dir)
    plans = build_plans(config)
    for plan in plans:
        load_plan_samples(plan, config.limit)
    is_vision = model_is_vision(config.model)
    check_images(plans, is_vision, config.use_images, config.model)
    use_images = is_vision and config.use_images
    done = {plan.name: _finished(plan, config, use_images) for plan in plans}  # a corrupt file: an error now
    regrade_failed(config, plans, done)
    todo = {plan.name: [s for s in plan.samples if s.id not in done[plan.name]] for plan in plans}
    timing: dict[str, float] = {}
    if any(todo.values()):
        from mhpo_vl.runs import console

        # vLLM's and the libraries' output goes to <output_dir>/logs/eval.log; the progress bars stay visible.
        with console.capture(console.log_path(out, "eval"), verbose=config.verbose):
            timing = _sample_suites(config, plans, todo, done, use_images, is_vision, sampler, processor)
    summary = evaluation_summary(config, plans, done, use_images, timing)
    write_summary(out, summary)
    return summary


def _finished(plan: SuitePlan, config: EvalConfig, use_images: bool) -> dict:
    """The problems of ``plan`` already in its responses file (checked against this evaluation's settings)."""
    from mhpo_vl.evaluation.results import RESPONSES_FILE, ResponsesFile, check_run_settings

    suite_dir = Path(config.output_dir) / plan.name
    if config.overwrite and suite_dir.exists():
        shutil.rmtree(suite_dir)
    check_run_settings(suite_dir, run_settings(plan, config, use_images))
    path = suite_dir / RESPONSES_FILE
    existing = ResponsesFile(path).load()
    strangers = [i for i in existing if i not in plan.dataset_index]
    if strangers:
        raise ValueError(f"{path}: {len(strangers)} problem id(s) are not in the suite "
                         f"(e.g. {', '.join(strangers[:5])}): the file belongs to another dataset")
    known = {s.id for s in plan.samples}
    short = [i for i, r in existing.items() if i in known and r.n != config.n]
    if short:
        raise ValueError(f"{path}: problem {short[0]!r} has {existing[short[0]].n} responses, expected --n {config.n}")
    return existing


def _grader(config: EvalConfig):
    from mhpo_vl.grading import Grader

    return Grader(num_workers=config.grader_workers, timeout_s=config.grader_timeout)


def regrade_failed(config: EvalConfig, plans: list[SuitePlan], done: dict) -> dict[str, int]:
    """Grade again, in place in ``done`` and in the responses files, the responses of earlier runs whose grading
    failed (``ProblemResult.grading_failed``: e.g. the grader's worker died on every retry); responses graded normally
    and timeouts are kept as they are. Returns {suite: responses graded again} (said on stderr)."""
    from mhpo_vl.evaluation.results import RESPONSES_FILE, ResponsesFile

    work = []  # (suite, problem result, response index, sample)
    for plan in plans:
        samples = {s.id: s for s in plan.samples}
        for result in done[plan.name].values():
            if result.id in samples:  # a problem outside this --limit / --ids selection is left as it is
                work += [(plan.name, result, i, samples[result.id]) for i in result.grading_failed()]
    if not work:
        return {}
    counts: dict[str, int] = {}
    for name, *_ in work:
        counts[name] = counts.get(name, 0) + 1
    print("[mhpo-vl eval] grading again the responses whose grading failed in an earlier run: "
          + ", ".join(f"{name}: {k}" for name, k in counts.items()), file=sys.stderr)
    with _grader(config) as grader:
        verdicts = grader.grade([sample for *_, sample in work], [result.responses[i] for _, result, i, _ in work])
    for (_, result, i, _), verdict in zip(work, verdicts):
        result.predictions[i] = verdict.prediction
        result.correct[i] = bool(verdict.correct)
        result.format_ok[i] = bool(verdict.format_ok)
        result.timed_out[i] = bool(verdict.timed_out)
        result.errors[i] = verdict.error
    for name in counts:
        ResponsesFile(Path(config.output_dir) / name / RESPONSES_FILE).rewrite(done[name].values())
    return counts


def _sample_suites(config, plans, todo, done, use_images, is_vision, sampler, processor) -> dict[str, float]:
    """Sample and grade every pending problem, suite by suite, appending each batch to its responses file."""
    started = time.perf_counter()
    own_sampler = sampler is None
    if own_sampler:
        sampler, processor = _start_sampler(config, is_vision, use_images, processor)
    processor = processor or getattr(sampler, "processor", None) or load_processor(config.model, is_vision)
    timing = {"engine_start": time.perf_counter() - started} if own_sampler else {}
    try:
        with _grader(config) as grader:
            for plan in plans:
                if todo[plan.name]:
                    suite_started = time.perf_counter()
                    _sample_suite(config, plan, todo[plan.name], done[plan.name], sampler, grader, processor,
                                  use_images)
                    timing[plan.name] = time.perf_counter() - suite_started
    finally:
        if own_sampler:
            sampler.close()  # free the engine before the next one starts (eval-run: one per checkpoint)
    return timing


def _start_sampler(config: EvalConfig, is_vision: bool, use_images: bool, processor):
    """(sampler, processor) from ``config``: the processor first, so a pixel-limit mismatch is an error before the
    engine starts (minutes); vLLM resizes every image again with the model's limits."""
    from mhpo_vl.collate import check_pixels_match_processor
    from mhpo_vl.rollout.factory import make_sampler

    if config.backend == "vllm":
        processor = processor or load_processor(config.model, is_vision)
        if use_images:
            check_pixels_match_processor(processor.image_processor, *pixel_budget(config), config.model)
    sampler = make_sampler(config.backend, config.model, dtype=config.dtype, seed=config.seed,
                           max_model_len=config.engine_max_model_len,
                           gpu_memory_utilization=config.gpu_memory_utilization)
    return sampler, processor or sampler.processor


def _sample_suite(config: EvalConfig, plan: SuitePlan, pending: list, done: dict, sampler, grader, processor,
                  use_images: bool) -> None:
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.evaluation.results import RESPONSES_FILE, ResponsesFile
    from mhpo_vl.prompts import get_template
    from mhpo_vl.rollout.sampling import SamplingConfig
    from mhpo_vl.runs import console

    template = get_template(plan.template)
    min_pixels, max_pixels = pixel_budget(config)
    encoder = PromptEncoder(processor, template, max_prompt_length=config.max_prompt_length, use_images=use_images,
                            min_pixels=min_pixels, max_pixels=max_pixels, system_prompt=config.system_prompt,
                            drop_images=not config.use_images)
    file = ResponsesFile(Path(config.output_dir) / plan.name / RESPONSES_FILE)
    bar = console.progress(total=len(plan.samples), initial=len(plan.samples) - len(pending), unit="problem",
                           desc=plan.name, disable=not config.progress)
    for start in range(0, len(pending), config.batch_size):
        batch = pending[start : start + config.batch_size]
        # The samplers seed prompt i of a call with seed + i*n: starting each call at the dataset position of its
        # first problem gives the problem at position d the seed seed + d*n whatever the batching when the pending
        # problems are consecutive (a whole suite, a --limit prefix, a resumed tail), so a resumed run draws what the
        # uninterrupted one would have (on a batch-invariant engine).
        first = plan.dataset_index[batch[0].id]
        sampling = SamplingConfig(n=config.n, temperature=config.temperature, top_p=config.top_p,
                                  max_tokens=config.max_tokens, seed=config.seed + first * config.n)
        results = problem_results(sample_and_grade(sampler, encoder.encode(batch), sampling, grader), template)
        file.append(results)  # on disk before the next batch starts
        done.update((result.id, result) for result in results)
        bar.update(len(batch))
    bar.close()


def problem_results(groups: Sequence[GradedGroup], template) -> list:
    """One ProblemResult (a responses.jsonl line) per graded group."""
    from mhpo_vl.evaluation.results import ProblemResult

    return [ProblemResult(
        id=g.sample.id, question=g.sample.question, answer=g.sample.answer, answer_type=g.sample.answer_type,
        choices=g.sample.choices, prompt=template.render(g.sample),
        responses=[c.text for c in g.completions], finish_reasons=[c.finish_reason for c in g.completions],
        num_tokens=[len(c.token_ids) for c in g.completions], predictions=[v.prediction for v in g.verdicts],
        correct=[bool(v.correct) for v in g.verdicts], format_ok=[bool(v.format_ok) for v in g.verdicts],
        timed_out=[bool(v.timed_out) for v in g.verdicts], errors=[v.error for v in g.verdicts],
        metadata=g.sample.metadata,
    ) for g in groups]


def evaluation_summary(config: EvalConfig, plans: list[SuitePlan], done: dict, use_images: bool,
                       timing: dict[str, float]) -> dict[str, Any]:
    """summary.json's content. Its keys are those of the files written so far ("benchmarks": one entry per suite)."""
    from mhpo_vl.evaluation.results import breakdown, macro_average, summarize_problems

    suites: dict[str, Any] = {}
    for plan in plans:
        results = [done[plan.name][s.id] for s in plan.samples]
        suites[plan.name] = {
            "metrics": summarize_problems(results),
            "breakdowns": {f: breakdown(results, f) for f in plan.suite.breakdowns},
            "source": plan.source, "split": plan.split, "template": plan.template,
            "selection": {"ids": plan.ids is not None, "limit": config.limit},
        }
    model = config.model
    return {
        "model": model,
        "model_label": config.label or Path(model.rstrip("/")).name or model,
        "sampling": {"n": config.n, "temperature": config.temperature, "top_p": config.top_p,
                     "max_tokens": config.max_tokens, "seed": config.seed, "backend": config.backend,
                     "dtype": config.dtype, "use_images": use_images},
        "benchmarks": suites,
        "average": macro_average(b["metrics"]["avg"] for b in suites.values()),
        "timing_seconds": timing,  # this invocation only (no entries when everything was already done)
    }


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from mhpo_vl.evaluation.results import SUMMARY_JSON, SUMMARY_MD, summary_markdown

    out.mkdir(parents=True, exist_ok=True)
    write_durably(out / SUMMARY_JSON, json.dumps(summary, indent=1, ensure_ascii=False))
    write_durably(out / SUMMARY_MD, summary_markdown(summary))
