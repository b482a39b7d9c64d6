"""MathVista scoring, reproducing lupantech/MathVista ``evaluation/calculate_score.py``.

Official pipeline: an LLM (GPT-4) extracts an answer from each response (``extract_answer.py``, after a few
rule-based shortcuts), then ``normalize_extracted_answer`` maps it to the answer's type and ``safe_equal`` compares
it with the gold answer by plain ``==``:
  - multi_choice: the extraction is stripped; a "(X)" anywhere in it means letter X; a letter among A, B, ... names
    that choice; ANYTHING ELSE is mapped to the nearest choice by Levenshtein distance (so "", "None" or garbage
    always lands on some choice),
  - integer: ``str(int(float(x)))`` (so "3.7" -> "3"),
  - float: ``str(round(float(x), int(precision)))`` (Python's round: round-half-even on the binary value; a gold
    "1.20" could never match, none exists),
  - list: ``str(x)`` (so "[2014, 2016]" matches only that exact spelling),
  - anything unparsable: None, which equals no answer.

``official`` mode does exactly that. ``strict`` mode (the default) does the same except the nearest-choice fallback:
there an extraction that is not a letter or "(X)" counts only when it names a choice (its exact text, a normalised
or mathematically equivalent form of exactly one choice's text, or a letter form such as "B." / "Option B").

Rows with an ``extraction`` field (the LLM's, as the official pipeline stores it) are scored from it. Rows without
one go through the official rule-based shortcuts (empty response, response equal to a choice, a response that is
already an integer/float, ``The answer is "X".``) and then, instead of GPT-4, this package's rule-based extraction
(mhpo_vl.grading.extract: last \\boxed{}, "answer is X", a lone final letter, the last number for numeric answers).
That replacement is the one known difference from the official pipeline; see docs/scoring.md.
"""
from __future__ import annotations

import re
from typing import Any

from mhpo_vl.grading.choices import letter_of, predicted_choice_index
from mhpo_vl.grading.extract import extract_answer
from mhpo_vl.grading.grader import MAX_ANSWER_CHARS

REQUIRED_FIELDS: tuple[str, ...] = ("pid", "question_type", "answer_type", "answer", "choices", "precision")
MODES = ("strict", "official")

_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")
_QUICK_ANSWER = re.compile(r'The answer is "(.*)"\.')


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit insert/delete/substitute costs (what python-Levenshtein's ``distance`` computes)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def most_similar_choice(prediction: str, choices: list[str]) -> str:
    """The first choice at minimal edit distance (the official ``get_most_similar``)."""
    distances = [levenshtein(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def quick_extract(response: str, row: dict) -> str | None:
    """The official extract_answer's rule-based shortcuts; None where the official code would ask the LLM."""
    if response == "":
        return ""
    if row["question_type"] == "multi_choice" and response in row["choices"]:
        return response
    if row["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if row["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    match = _QUICK_ANSWER.search(response)
    return match.group(1) if match else None


def rule_based_extraction(response: str, row: dict) -> str:
    """Quick rules, then this package's extraction in place of the official LLM extractor ("" when nothing found)."""
    quick = quick_extract(response, row)
    if quick is not None:
        return quick
    multi_choice = row["question_type"] == "multi_choice"
    answer = extract_answer(response, expects_letter=multi_choice, expects_number=row["answer_type"] in ("integer", "float"))
    if answer is None:
        return ""
    if multi_choice:
        # The LLM extractor answers with the bare letter; give the normaliser the same.
        letter = letter_of(answer, len(row["choices"]))
        if letter is not None and answer not in row["choices"]:
            return letter
    return answer


def normalize_extraction(extraction: Any, row: dict, mode: str = "strict") -> str | None:
    """``normalize_extracted_answer`` of the official scorer (``mode="official"``) or its strict variant."""
    if mode not in MODES:
        raise ValueError(f"unknown MathVista mode {mode!r}; valid: {', '.join(MODES)}")
    choices, answer_type = row["choices"], row["answer_type"]
    if row["question_type"] == "multi_choice":
        if not choices:
            raise ValueError("multi_choice row has no choices")
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = _PAREN_LETTER.findall(text)
        if letters:
            text = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if text in options:
            return choices[options.index(text)]
        if mode == "official":
            return most_similar_choice(text, choices)
        if text in choices:
            return text
        index = predicted_choice_index(text, choices) if text and len(text) <= MAX_ANSWER_CHARS else None
        return None if index is None else choices[index]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(row["precision"])))
    except (ValueError, TypeError, OverflowError):  # not a number: the official scorer's None
        return None
    if answer_type == "list":
        return str(extraction)
    # The official function leaves any other answer type's extraction undefined (an UnboundLocalError); none exists.
    raise ValueError(f"unknown MathVista answer_type {answer_type!r}")


def score(row: dict, response: str | None, mode: str = "strict") -> tuple[str | None, bool, str]:
    """(prediction, correct, extraction) for one MathVista row."""
    extraction = row.get("extraction")
    # The official extract_answer.py re-extracts rows whose extraction is missing or blank.
    if extraction is None or (isinstance(extraction, str) and not extraction.strip()):
        extraction = rule_based_extraction(response or "", row)
    prediction = normalize_extraction(extraction, row, mode)
    return prediction, prediction == row["answer"], extraction
