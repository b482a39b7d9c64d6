"""Grade responses against Samples: the same code gives the training reward and the evaluation verdict.

``grade_one`` is the pure in-process grader (no timeout: it is what the pool workers run, and what tests call).
``Grader`` runs it in a ``HardTimeoutPool``: an answer whose sympy work hangs is killed after ``timeout_s`` and
comes back as ``correct=False, timed_out=True``; the batch goes on. A worker that dies mid-answer (killed, out of
memory, a crash in C code) costs nothing: the answer is graded again in a live worker (up to
``pool.RETRIES_AFTER_DEATH`` times); if every attempt's worker died, the verdict is a grading error (``error`` set,
``timed_out`` False, ``grading_failed`` True), counted as such by the reward metrics and by `mhpo-vl eval` (whose
rerun grades it again), never a silent "wrong".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mhpo_vl.grading.choices import gold_choice_index, letter_of, predicted_choice_index
from mhpo_vl.grading.equivalence import answers_equivalent
from mhpo_vl.grading.extract import extract_answer, tail
from mhpo_vl.grading.format import format_ok as check_format
from mhpo_vl.grading.pool import HardTimeoutPool
from mhpo_vl.types import Sample

MAX_ANSWER_CHARS = 2_000


@dataclass
class Verdict:
    correct: bool
    prediction: str | None  # the extracted answer; None when the response has none
    format_ok: bool  # <think>...</think> then \boxed{} (or just \boxed{} when the grader does not require think)
    timed_out: bool = False
    error: str | None = None  # why grading itself failed (timeout, exception in a worker); None on a normal verdict

    @property
    def grading_failed(self) -> bool:
        """Grading failed other than by timing out (every attempt's worker died, an exception, an answer too long to
        grade): ``correct`` is False because the verdict is unknown, not because the answer was judged wrong."""
        return self.error is not None and not self.timed_out


def is_correct(sample: Sample, prediction: str) -> bool:
    """Is ``prediction`` (an extracted answer) right for ``sample``? Pure; may run sympy (no timeout here)."""
    if sample.answer_type == "multiple_choice":
        answer_letter = sample.metadata.get("answer_letter")
        if sample.choices:
            gold = gold_choice_index(sample.answer, sample.choices, answer_letter)
            return predicted_choice_index(prediction, sample.choices) == gold
        # Choices only inside the question text (MathVerse): compare letters.
        gold_letter = answer_letter or (sample.answer.strip() if len(sample.answer.strip()) == 1 else None)
        if gold_letter:
            return letter_of(prediction) == gold_letter.upper()
        return answers_equivalent(sample.answer, prediction, "text", None)
    return answers_equivalent(sample.answer, prediction, sample.answer_type, sample.precision)


def extract_prediction(sample: Sample, response: str, boxed_only: bool = False) -> str | None:
    return extract_answer(
        response,
        expects_letter=sample.answer_type == "multiple_choice",
        expects_number=sample.answer_type in ("integer", "float"),
        boxed_only=boxed_only,
    )


def grade_one(sample: Sample, response: str, *, boxed_only: bool = False, require_think: bool = True) -> Verdict:
    """Extract the answer from ``response`` and judge it; runs in the calling thread, any thread."""
    prediction = extract_prediction(sample, response, boxed_only)
    formatted = check_format(response, require_think)
    if prediction is None or not prediction.strip():
        return Verdict(correct=False, prediction=prediction, format_ok=formatted)
    if len(prediction) > MAX_ANSWER_CHARS:
        # No real final answer is this long (a box around a whole derivation); sympy on it would only burn the timeout.
        return Verdict(correct=False, prediction=prediction[:MAX_ANSWER_CHARS], format_ok=formatted,
                       error=f"extracted answer is {len(prediction)} characters (limit {MAX_ANSWER_CHARS}): not graded")
    return Verdict(correct=is_correct(sample, prediction), prediction=prediction, format_ok=formatted)


def _grade_task(sample: Sample, response: str, boxed_only: bool, require_think: bool) -> Verdict:
    return grade_one(sample, response, boxed_only=boxed_only, require_think=require_think)


def _warm_up() -> None:
    # First math-verify call builds its regexes and imports the ANTLR parser (about a second): pay it at start-up,
    # not inside the first answer's timeout.
    answers_equivalent("\\frac{1}{2}", "0.5", "expression", None)
    answers_equivalent("x^2", "x \\cdot x", "expression", None)


class Grader:
    """Batched grading in a process pool with a hard per-answer timeout. Use as a context manager or call close()."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        *,
        boxed_only: bool = False,
        require_think: bool = True,
        memory_limit_mb: int | None = 4096,
    ):
        self.boxed_only = boxed_only
        self.require_think = require_think
        self.timeout_s = timeout_s
        self._pool = HardTimeoutPool(
            num_workers,
            timeout_s,
            warmup=_warm_up,
            preload=["mhpo_vl.grading.warm", "mhpo_vl.grading.grader"],
            memory_limit_mb=memory_limit_mb,
        )

    @property
    def num_timeouts(self) -> int:
        return self._pool.num_timeouts

    @property
    def num_worker_deaths(self) -> int:
        """Workers that died mid-answer (each such answer graded again, or a grading error after the last retry)."""
        return self._pool.num_worker_deaths

    def grade(self, samples: list[Sample], responses: list[str]) -> list[Verdict]:
        if len(samples) != len(responses):
            raise ValueError(f"grade: {len(samples)} samples but {len(responses)} responses")
        # Images stay home: workers need the answer, not megabytes of pixels per task.
        light = [dataclasses.replace(s, images=[]) for s in samples]
        tasks = [(s, tail(r), self.boxed_only, self.require_think) for s, r in zip(light, responses)]
        verdicts = []
        for (sample, response, _, _), result, full_response in zip(tasks, self._pool.map(_grade_task, tasks), responses):
            if result.error is None:
                # The worker saw only the response's tail; the format check needs its head ("<think>").
                result.value.format_ok = check_format(full_response, self.require_think)
                verdicts.append(result.value)
                continue
            # Timed out, raised, or its worker died on every attempt: not graded, and the verdict says why (correct is
            # False, timed_out / error tell a timeout from a grading error). Extraction is plain string work, redone here.
            verdicts.append(
                Verdict(
                    correct=False,
                    prediction=extract_prediction(sample, response, self.boxed_only),
                    format_ok=check_format(full_response, self.require_think),
                    timed_out=result.timed_out,
                    error=result.error,
                )
            )
        return verdicts

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

