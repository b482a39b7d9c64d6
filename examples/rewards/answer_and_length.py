"""An example `reward.function`: the built-in grader's answer check plus a small cost per character.

    mhpo-vl train --config configs/demo_cpu.yaml \
        reward.function=examples/rewards/answer_and_length.py:answer_and_length

It runs in the grader's worker processes (imported once per worker), one call per response, with the
`reward.timeout_s` limit; docs/training.md ("Your own reward") has the rules. What it returns:

- score: accuracy (1 if the answer is right) + 0.1 format (the built-in `<think>...</think>` + `\\boxed{}` check)
  - a length cost that grows linearly to LENGTH_WEIGHT at the character budget and stays there; the budget is the
  problem's `metadata["max_chars"]` when the dataset has such a column (a column mapping can bring it in:
  docs/datasets.md), else BUDGET_CHARS. A cost per character, small next to being right, nudges a model towards
  shorter answers without rewarding wrong short ones over right long ones (0.9 + 0.1 - 0.1 > 0 + 0.1 - 0).
- correct / format_ok: the grader's verdict, so `reward/accuracy`, `val/accuracy` and the best checkpoint mean
  what they mean with the built-in reward (and the answer is not graded twice);
- accuracy, length_cost: components, logged per step as `reward/fn/accuracy` and `reward/fn/length_cost`.
"""
from __future__ import annotations

from mhpo_vl.grading import grade_one
from mhpo_vl.types import Sample

BUDGET_CHARS = 2000
LENGTH_WEIGHT = 0.1
FORMAT_WEIGHT = 0.1
REQUIRE_THINK = True  # the format asked of the model: <think>...</think> then \boxed{}


def answer_and_length(sample: Sample, response: str) -> dict[str, float]:
    verdict = grade_one(sample, response, require_think=REQUIRE_THINK)  # gold first, math-verify, choices, ...
    budget = int(sample.metadata.get("max_chars", BUDGET_CHARS))
    length_cost = LENGTH_WEIGHT * min(len(response) / budget, 1.0)
    accuracy = 1.0 if verdict.correct else 0.0
    formatted = 1.0 if verdict.format_ok else 0.0
    return {"score": accuracy + FORMAT_WEIGHT * formatted - length_cost, "correct": verdict.correct,
            "format_ok": verdict.format_ok, "accuracy": accuracy, "length_cost": length_cost}
