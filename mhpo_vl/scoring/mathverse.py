"""MathVerse scoring: rule-based, NOT the official method.

The official MathVerse evaluation (ZrrSkywalker/MathVerse ``evaluation/extract_answer_s1.py`` and
``score_answer_s2.py``) is a two-stage LLM judge: GPT-4 extracts the answer, then GPT-4 decides whether it matches
the gold answer. Nothing here calls an LLM. Instead:
  - multi-choice rows (gold is a letter A-D): the response's answer is extracted (last \\boxed{}, "answer is X", a
    lone final letter) and read as a letter ("C", "(C)", "C:120°", "Option C"); failing that, its text is matched
    against the choices listed in the question ("Choices:\\nA:40°\\nB:60°..."; the vision-only versions have none),
  - free-form rows: the extracted answer (the last number when nothing else marks it, as the prompt asks for "the
    final value ... at the end") is compared with math-verify and the grader's normalisation (units, degree signs,
    "Circumference = 50.27 cm" style gold answers, and the "掳" that some gold answers have instead of "°").
docs/scoring.md lists what an LLM judge would accept that these rules do not.
"""
from __future__ import annotations

import re

from mhpo_vl.grading.choices import LETTERS, letter_of, predicted_choice_index
from mhpo_vl.grading.equivalence import answers_equivalent, plain_number
from mhpo_vl.grading.extract import extract_answer
from mhpo_vl.grading.grader import MAX_ANSWER_CHARS
from mhpo_vl.grading.normalize import normalize_answer

REQUIRED_FIELDS: tuple[str, ...] = ("answer", "question_type", "question")

_CHOICE_LINE = re.compile(r"^\s*([A-H])\s*[:.)：]\s*(.+?)\s*$")


def choices_from_question(question: str) -> list[str]:
    """["40°", "60°", ...] from the "Choices:" block of a MathVerse question; [] when it has none."""
    _, marker, block = question.rpartition("Choices:")
    if not marker:
        return []
    choices: list[str] = []
    for line in block.strip().splitlines():
        m = _CHOICE_LINE.match(line)
        if not m or m.group(1) != LETTERS[len(choices)]:
            break
        choices.append(m.group(2))
    return choices


def score(row: dict, response: str) -> tuple[str | None, bool]:
    """(prediction, correct) for one MathVerse row."""
    gold = str(row["answer"]).strip()
    if row["question_type"] == "multi-choice":
        answer = extract_answer(response, expects_letter=True)
        if answer is None:
            return None, False
        choices = choices_from_question(row["question"])
        letter = letter_of(answer, len(choices) or None)
        if letter is None and choices:
            index = predicted_choice_index(answer, choices)
            letter = None if index is None else LETTERS[index]
        return (letter or answer), letter is not None and letter == gold.upper()
    answer = extract_answer(response, expects_number=plain_number(normalize_answer(gold)) is not None)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:  # the grader's limit: no real answer is that long
        return answer, False
    return answer, answers_equivalent(gold, answer, "expression", None)
