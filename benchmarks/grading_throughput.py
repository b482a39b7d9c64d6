"""Grading throughput: answers per second through `Grader` (process pool, hard timeouts) on a realistic mix.

The mix: every MATH-500 problem (the fixture file) with four responses each, shaped like a reasoning model's
output (a <think> block of ~1,500 characters, then a boxed answer):
  right (the gold answer as written), right in another form (14/3 for \\frac{14}{3}, 42.0 for 42, no \\left/\\right),
  wrong (a perturbed answer), and no final answer at all.
Start-up (forkserver, workers importing sympy and math-verify) is timed separately from grading; grading is timed
as the trainer calls it: one `grade()` call per batch of 256 responses (a GRPO rollout batch).

    python benchmarks/grading_throughput.py [--math500 PATH] [--num-workers 2] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mhpo_vl.grading import Grader  # noqa: E402
from mhpo_vl.types import Sample  # noqa: E402

FILLER = [
    "Let me restate the problem in my own words.",
    "We can set up an equation from the given conditions: 3x + 5 = 20, so x = 5.",
    "Checking the boundary case n = 1 gives 2, which matches.",
    "Using the identity \\sin^2\\theta + \\cos^2\\theta = 1 we simplify the expression.",
    "The discriminant is b^2 - 4ac = 16 - 12 = 4 > 0, so there are two real roots.",
    "Wait, I should double-check the arithmetic: 12 \\times 7 = 84.",
    "So the intermediate result is \\frac{7}{2}, which we substitute back.",
]


def alternative_form(answer: str) -> str:
    """The same answer written differently, as a model would."""
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", answer)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if re.fullmatch(r"-?\d+", answer):
        return answer + ".0"
    return answer.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac")


def wrong_form(answer: str, rng: random.Random) -> str:
    numbers = re.findall(r"\d+", answer)
    if numbers:
        n = rng.choice(numbers)
        return answer.replace(n, str(int(n) + rng.randint(1, 9)), 1)
    return answer + " + 1"


def response(body_answer: str | None, rng: random.Random) -> str:
    thought = " ".join(rng.choice(FILLER) for _ in range(24))
    if body_answer is None:
        return f"<think>{thought}</think> I was not able to finish the computation."
    return f"<think>{thought}</think> Therefore the final answer is $\\boxed{{{body_answer}}}$."


def build_mix(math500_path: Path, seed: int = 0) -> tuple[list[Sample], list[str], list[bool | None]]:
    rng = random.Random(seed)
    samples, responses, expected = [], [], []
    for line in math500_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sample = Sample(id=row["unique_id"], source="math500", split="test", question=row["problem"],
                        answer=row["answer"], answer_type="expression")
        for body, correct in ((row["answer"], True), (alternative_form(row["answer"]), None),
                              (wrong_form(row["answer"], rng), None), (None, False)):
            samples.append(sample)
            responses.append(response(body, rng))
            expected.append(correct)
    return samples, responses, expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO.parent / "shared" / "fixtures" / "text_math" / "math500_test.jsonl"
    parser.add_argument("--math500", type=Path, default=Path(os.environ.get("MHPO_VL_MATH500", default)))
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    samples, responses, expected = build_mix(args.math500)
    started = time.perf_counter()
    with Grader(num_workers=args.num_workers, timeout_s=args.timeout_s) as grader:
        grader.grade(samples[:1], responses[:1])  # returns once a worker is up and warm
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        verdicts = []
        for i in range(0, len(samples), args.batch_size):
            verdicts += grader.grade(samples[i : i + args.batch_size], responses[i : i + args.batch_size])
        grading_s = time.perf_counter() - started
    right_as_written = [v.correct for v, e in zip(verdicts, expected) if e is True]
    no_answer = [v.correct for v, e in zip(verdicts, expected) if e is False]
    result = {
        "answers": len(verdicts),
        "num_workers": args.num_workers,
        "answers_per_second": round(len(verdicts) / grading_s, 1),
        "grading_seconds": round(grading_s, 2),
        "startup_seconds": round(startup_s, 2),
        "timeouts": sum(v.timed_out for v in verdicts),
        "errors": sum(v.error is not None and not v.timed_out for v in verdicts),
        "accuracy_on_gold_as_written": round(sum(right_as_written) / len(right_as_written), 4),
        "accuracy_on_alternative_forms": round(sum(v.correct for v, e in zip(verdicts[1::4], expected[1::4])) / len(verdicts[1::4]), 4),
        "accepted_wrong_forms": sum(v.correct for v in verdicts[2::4]),
        "accepted_no_answer": sum(no_answer),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
