"""The library evaluation pipeline with a fake sampler (fixed texts): the trainer's validation metrics, and
run_evaluation with a sampler it is given (as the trainer passes its colocated engine)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from grading_crash_helpers import CRASH, HANG, grade_or_crash

from mhpo_vl.evaluation import EvalConfig, run_evaluation, run_validation
from mhpo_vl.grading import Grader
from mhpo_vl.grading.reward import RewardFunction
from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.types import Completion, EncodedPrompt, Sample

# Per prompt, the fixed responses: right with format, right without <think>, wrong, no answer.
TEXTS = {
    "a": ["<think>2+2</think> \\boxed{4}", "\\boxed{4}"],
    "b": ["<think>no</think> \\boxed{5}", "I do not know"],
    "c": ["<think>x</think> \\boxed{\\frac{1}{2}}", "<think>y</think> \\boxed{0.5}"],
}
GOLD = {"a": "4", "b": "7", "c": "0.5"}


class FixedSampler:
    """generate() returns TEXTS[sample.id][:n] for each prompt; token ids: one per character (lengths known)."""

    def __init__(self):
        self.calls: list[SamplingConfig] = []

    def generate(self, prompts, config):
        self.calls.append(config)
        return [[Completion(text=t, token_ids=list(range(len(t))), sampler_logprobs=None, finish_reason="stop")
                 for t in TEXTS[p.sample.id][: config.n]] for p in prompts]

    def close(self):
        raise AssertionError("run_evaluation must not close a sampler it was given")


def _prompts():
    samples = [Sample(id=i, source="t", split="val", question=f"q{i}", answer=GOLD[i], answer_type="expression")
               for i in TEXTS]
    return [EncodedPrompt(sample=s, prompt_text=s.question, prompt_token_ids=[1, 2]) for s in samples]


def _validate_as_the_trainer_did(sampler, prompts, config, reward_fn, all_reduce_sum):
    """Trainer.validate's body before the pipeline (mhpo_vl/trainer.py at 0c85c6e), minus wake_up and caching."""
    groups = sampler.generate(prompts, config)
    samples = [p.sample for p, g in zip(prompts, groups) for _ in g]
    texts = [c.text for g in groups for c in g]
    out = reward_fn(samples, texts)
    correct, fmt, n = all_reduce_sum([sum(v.correct for v in out.verdicts),
                                      sum(v.format_ok for v in out.verdicts), len(out.verdicts)])
    lengths = [len(c.token_ids) for g in groups for c in g]
    return {"val/accuracy": correct / max(n, 1), "val/format_rate": fmt / max(n, 1),
            "val/response_length": float(np.mean(lengths)) if lengths else 0.0, "val/num_answers": n}


@pytest.fixture(scope="module")
def grader():
    with Grader(num_workers=1, timeout_s=10.0, require_think=True) as g:
        yield g


def test_run_validation_gives_the_trainers_validation_metrics(grader):
    config = SamplingConfig(n=2, temperature=0.5, top_p=1.0, max_tokens=64, seed=48)
    two_ranks = lambda values: [2 * float(v) for v in values]  # noqa: E731  (another rank with the same answers)
    for reduce in (None, two_ranks):
        got = run_validation(FixedSampler(), _prompts(), config, grader, all_reduce_sum=reduce)
        old = _validate_as_the_trainer_did(FixedSampler(), _prompts(), config, RewardFunction(grader),
                                           reduce or (lambda values: list(values)))
        assert got == pytest.approx(old)
        assert set(got) == {"val/accuracy", "val/format_rate", "val/response_length", "val/num_answers"}
    # By hand: correct = a1 a2 c1 c2 (4 of 6); formatted = <think>...</think> then \boxed{}: a1 b1 c1 c2 (4 of 6).
    got = run_validation(FixedSampler(), _prompts(), config, grader)
    lengths = [len(t) for texts in TEXTS.values() for t in texts]
    assert got == pytest.approx({"val/accuracy": 4 / 6, "val/format_rate": 4 / 6,
                                 "val/response_length": sum(lengths) / 6, "val/num_answers": 6})
    one = run_validation(FixedSampler(), _prompts(), SamplingConfig(n=1, max_tokens=8), grader)
    assert one["val/accuracy"] == pytest.approx(2 / 3) and one["val/num_answers"] == 3


def test_a_sampler_returning_too_few_completions_is_an_error(grader):
    with pytest.raises(RuntimeError, match=r"sampler returned \[2, 2, 2\] completions for 3 prompts, expected 3 each"):
        run_validation(FixedSampler(), _prompts(), SamplingConfig(n=3, max_tokens=8), grader)


def test_run_evaluation_with_a_given_sampler(tmp_path, fixtures_dir, tiny_text_model_dir, monkeypatch):
    """The files and summary of `mhpo-vl eval`, sampled by a sampler the caller built (never closed here)."""
    from mhpo_vl.datasets import load_dataset

    rows = load_dataset("math500", str(fixtures_dir / "text_math"))[:2]
    for row in rows:  # the fake's answers: the gold one, then a wrong one
        TEXTS[row.id] = [f"<think>ok</think> \\boxed{{{row.answer}}}", "\\boxed{nonsense}"]
    monkeypatch.setattr("mhpo_vl.rollout.factory.make_sampler", lambda *a, **k: pytest.fail("started a sampler"))
    sampler = FixedSampler()
    config = EvalConfig(model=str(tiny_text_model_dir), output_dir=tmp_path / "eval", suites="math500",
                        sources={"math500": str(fixtures_dir / "text_math")}, n=2, limit=2, seed=5, progress=False)
    summary = run_evaluation(config, sampler=sampler)
    metrics = summary["benchmarks"]["math500"]["metrics"]
    assert metrics["problems"] == 2 and metrics["avg"] == pytest.approx(0.5) and metrics["format_rate"] == 0.5
    assert [c.seed for c in sampler.calls] == [5] and summary["timing_seconds"].keys() == {"math500"}
    lines = [json.loads(x) for x in (tmp_path / "eval" / "math500" / "responses.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [r.id for r in rows] and all(x["correct"] == [True, False] for x in lines)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_eval_counts_grading_errors_and_timeouts_and_a_rerun_grades_only_the_errors_again(
        tmp_path, fixtures_dir, tiny_text_model_dir, monkeypatch):
    import mhpo_vl.grading.grader as grader_module
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.evaluation.results import summary_markdown

    rows = load_dataset("math500", str(fixtures_dir / "text_math"))[:2]
    crashing = f"<think>ok</think> {CRASH} \\boxed{{{rows[0].answer}}}"  # right, but its grader always dies
    TEXTS[rows[0].id] = [f"<think>ok</think> \\boxed{{{rows[0].answer}}}", crashing]
    TEXTS[rows[1].id] = [f"{HANG} \\boxed{{{rows[1].answer}}}", "\\boxed{nonsense}"]  # a timeout, a wrong answer
    original_task = grader_module._grade_task
    monkeypatch.setattr(grader_module, "_grade_task", grade_or_crash)
    config = EvalConfig(model=str(tiny_text_model_dir), output_dir=tmp_path / "eval", suites="math500",
                        sources={"math500": str(fixtures_dir / "text_math")}, n=2, limit=2, seed=5, progress=False,
                        grader_timeout=2.0)
    metrics = run_evaluation(config, sampler=FixedSampler())["benchmarks"]["math500"]["metrics"]
    assert metrics["grading_errors"] == 1 and metrics["timed_out"] == 1 and metrics["avg"] == pytest.approx(0.25)
    markdown = (tmp_path / "eval" / "summary.md").read_text()
    assert "| timeouts | grading errors |" in markdown and "| 1 | 1 |" in markdown
    responses_file = tmp_path / "eval" / "math500" / "responses.jsonl"
    first = [json.loads(x) for x in responses_file.read_text().splitlines()]
    assert first[0]["errors"] == [None, "worker died (exit code 11) on each of 3 attempts"]
    assert first[0]["correct"] == [True, False] and first[0]["timed_out"] == [False, False]
    assert first[1]["timed_out"] == [True, False]

    # The rerun: the grader works again; only the response whose grading failed is graded, the timeout is kept.
    monkeypatch.setattr(grader_module, "_grade_task", original_task)  # (HANG would not hang now: kept all the same)
    graded: list[str] = []
    grade = grader_module.Grader.grade

    def recording_grade(self, samples, responses):
        graded.extend(responses)
        return grade(self, samples, responses)

    monkeypatch.setattr(grader_module.Grader, "grade", recording_grade)
    sampler = FixedSampler()
    summary = run_evaluation(config, sampler=sampler)
    assert sampler.calls == [] and graded == [crashing]
    metrics = summary["benchmarks"]["math500"]["metrics"]
    assert metrics["grading_errors"] == 0 and metrics["timed_out"] == 1 and metrics["avg"] == pytest.approx(0.5)
    again = [json.loads(x) for x in responses_file.read_text().splitlines()]
    assert again[0]["correct"] == [True, True] and again[0]["errors"] == [None, None]
    assert again[0]["predictions"][1] == again[0]["predictions"][0] and again[0]["format_ok"] == [True, True]
    assert again[1] == first[1]  # the timed-out and the wrongly answered problem: as they were
    assert "grading errors" in summary_markdown(summary)
    graded.clear()
    run_evaluation(config, sampler=sampler)  # nothing failed any more: nothing is graded
    assert graded == []


def test_make_sampler_names_what_it_builds():
    from mhpo_vl.rollout.factory import make_sampler

    with pytest.raises(ValueError, match="unknown sampler backend 'tgi'; valid: vllm, hf"):
        make_sampler("tgi", "m")
    with pytest.raises(ValueError, match="dtype must be bfloat16, float16 or float32; got 'fp8'"):
        make_sampler("vllm", "m", dtype="fp8")
