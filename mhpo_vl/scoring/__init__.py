"""Benchmark scorers for `mhpo-vl score`: each benchmark's own rules on rows in the benchmark's own format.
(Not to be confused with the evaluation suites of `mhpo-vl eval`, mhpo_vl/evaluation/suites.py, which grade with the
training grader, nor with the performance benchmarks in the top-level benchmarks/ folder.)

mathvista.py, mathvision.py, mathverse.py hold the benchmark-specific rules (see docs/scoring.md); the text math
sets and Geometry3K are scored with the training grader (mhpo_vl.grading). ``validate_row`` names the first
missing or malformed field of a row; ``score_row`` is the pure per-row function the scoring pool runs.
"""
from __future__ import annotations

import string
from typing import Any

MATHVISTA, MATHVISION, MATHVERSE = "mathvista", "mathvision", "mathverse"
GRADER_SCORED = ("geometry3k", "math500", "aime24", "aime25", "amc23", "hmmt25")  # no official scorer: the grader's
SCORERS = (MATHVISTA, MATHVISION, MATHVERSE) + GRADER_SCORED  # the benchmarks `mhpo-vl score --benchmark` scores
MODES = ("strict", "official")
# The field that names a row in each benchmark's original file (MathVerse: sample_index is unique across versions).
REFERENCE_KEYS = {MATHVISTA: "pid", MATHVISION: "id", MATHVERSE: "sample_index", "math500": "unique_id"}


def load_reference(benchmark: str, path: str) -> dict[str, dict]:
    """The benchmark's original file (JSON list, JSON object keyed by id as MathVista's testmini.json, or JSONL),
    as {id: row}. Raises naming the file and row when a row lacks its id or an id repeats."""
    import json
    from pathlib import Path

    if benchmark not in REFERENCE_KEYS:
        raise ValueError(f"--reference is supported for {', '.join(REFERENCE_KEYS)}, not {benchmark!r}")
    key = REFERENCE_KEYS[benchmark]
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = list(data.values()) if isinstance(data, dict) else data
    except json.JSONDecodeError:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {number}: invalid JSON ({exc.msg})") from exc
    reference: dict[str, dict] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or key not in row:
            raise ValueError(f"{path}: row {index} has no {key!r} field")
        if str(row[key]) in reference:
            raise ValueError(f"{path}: {key} {row[key]!r} appears twice")
        reference[str(row[key])] = row
    return reference


def merge_reference(benchmark: str, row: dict, reference: dict[str, dict]) -> tuple[dict | None, str | None]:
    """The row completed with the reference's fields it lacks, or an error: no id, an id not in the benchmark, or
    a gold field that disagrees with the benchmark's (predictions made for another version of it)."""
    key = REFERENCE_KEYS[benchmark]
    if key not in row:
        return None, f"missing field {key!r} (needed to find the row in --reference)"
    original = reference.get(str(row[key]))
    if original is None:
        return None, f"{key} {row[key]!r} is not in the benchmark (--reference)"
    for name in required_fields(benchmark):
        if name in row and name in original and row[name] != original[name]:
            return None, f"field {name!r} is {row[name]!r} but the benchmark has {original[name]!r}"
    return {**original, **row}, None


def required_fields(benchmark: str) -> tuple[str, ...]:
    if benchmark == MATHVISTA:
        from mhpo_vl.scoring.mathvista import REQUIRED_FIELDS
    elif benchmark == MATHVISION:
        from mhpo_vl.scoring.mathvision import REQUIRED_FIELDS
    elif benchmark == MATHVERSE:
        from mhpo_vl.scoring.mathverse import REQUIRED_FIELDS
    elif benchmark in GRADER_SCORED:
        REQUIRED_FIELDS = ("answer",)  # noqa: N806
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(SCORERS)}")
    return REQUIRED_FIELDS


def validate_row(benchmark: str, row: Any, response_field: str) -> str | None:
    """None when ``row`` can be scored, else a message naming the missing or malformed field."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for name in required_fields(benchmark):
        if name not in row:
            return f"missing field {name!r}"
    has_extraction = benchmark == MATHVISTA and isinstance(row.get("extraction"), str) and row["extraction"].strip()
    if not has_extraction:
        if response_field not in row:
            return f"missing field {response_field!r}" + (" (and no 'extraction')" if benchmark == MATHVISTA else "")
        if not isinstance(row[response_field], str):
            return f"field {response_field!r} must be a string, got {type(row[response_field]).__name__}"
    if benchmark == MATHVISTA:
        if row["question_type"] not in ("multi_choice", "free_form"):
            return f"field 'question_type' must be multi_choice or free_form, got {row['question_type']!r}"
        if row["question_type"] == "multi_choice" and not (isinstance(row["choices"], list) and row["choices"]):
            return "field 'choices' must be a non-empty list for a multi_choice row"
        if row["question_type"] == "free_form" and row["answer_type"] not in ("integer", "float", "list"):
            return f"field 'answer_type' has unknown value {row['answer_type']!r}"
    elif benchmark == MATHVISION:
        if not isinstance(row["options"], list):
            return "field 'options' must be a list"
        if row["options"]:
            letter = str(row["answer"])
            if len(letter) != 1 or letter not in string.ascii_uppercase[: len(row["options"])]:
                return f"field 'answer' must be a letter naming one of the {len(row['options'])} options, got {letter!r}"
    elif benchmark == MATHVERSE:
        if row["question_type"] not in ("multi-choice", "free-form"):
            return f"field 'question_type' must be multi-choice or free-form, got {row['question_type']!r}"
    elif benchmark in GRADER_SCORED:
        if "choices" in row and row["choices"] is not None and not isinstance(row["choices"], list):
            return "field 'choices' must be a list"
    return None


def _grader_sample(benchmark: str, row: dict):
    from mhpo_vl.grading.equivalence import plain_number
    from mhpo_vl.types import Sample

    answer = str(row["answer"])
    choices = row.get("choices") or None
    metadata = {}
    if choices:
        answer_type = "multiple_choice"
        letter = row.get("ground_truth") or row.get("answer_letter")  # hiyouga/geometry3k keeps the letter there
        if isinstance(letter, str):
            metadata["answer_letter"] = letter
    else:
        number = plain_number(answer.strip())
        answer_type = "integer" if number is not None and float(number).is_integer() and "." not in answer else "expression"
    row_id = str(row.get("id", row.get("unique_id", "")))
    return Sample(id=row_id, source=benchmark, split="", question="", answer=answer, answer_type=answer_type, choices=choices, metadata=metadata)


def score_row(benchmark: str, mode: str, row: dict, response: str) -> dict[str, Any]:
    """Fields to add to an output row: ``prediction``, ``correct`` (and ``extraction`` for MathVista rows scored
    from the response). Pure; may run sympy, so the caller runs it under a timeout."""
    if benchmark == MATHVISTA:
        from mhpo_vl.scoring import mathvista

        prediction, correct, extraction = mathvista.score(row, response, mode)
        added = {"prediction": prediction, "correct": bool(correct)}
        if extraction is not row.get("extraction"):
            added["extraction"] = extraction
        return added
    if benchmark == MATHVISION:
        from mhpo_vl.scoring import mathvision

        prediction, correct = mathvision.score(row, response)
    elif benchmark == MATHVERSE:
        from mhpo_vl.scoring import mathverse

        prediction, correct = mathverse.score(row, response)
    elif benchmark in GRADER_SCORED:
        from mhpo_vl.grading.grader import grade_one

        verdict = grade_one(_grader_sample(benchmark, row), response, require_think=False)
        prediction, correct = verdict.prediction, verdict.correct
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(SCORERS)}")
    return {"prediction": prediction, "correct": bool(correct)}
