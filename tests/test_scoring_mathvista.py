"""MathVista scoring against the official calculate_score / extract_answer rules.

tests/data/mathvista_official_verdicts.jsonl holds the OFFICIAL code's outputs (lupantech/MathVista
evaluation/calculate_score.py normalize_extracted_answer + safe_equal, with python-Levenshtein; and the rule-based
part of extract_answer.py), run outside this repository on hand-written extractions and responses for the real
testmini rows: "normalize" lines give (pid, extraction) -> official prediction and verdict, "quick" lines give
(pid, response) -> the quick rules' extraction (null where the official code would call GPT-4).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mhpo_vl.scoring import mathvista

DATA = Path(__file__).parent / "data" / "mathvista_official_verdicts.jsonl"


@pytest.fixture(scope="module")
def rows(fixtures_dir):
    return json.loads((fixtures_dir / "mathvista" / "testmini.json").read_text())


@pytest.fixture(scope="module")
def official():
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


def test_official_mode_reproduces_official_verdicts_exactly(rows, official):
    cases = [c for c in official if c["kind"] == "normalize"]
    assert len(cases) == 3000 and 1000 < sum(c["official_correct"] for c in cases) < 2000
    mismatches = []
    for c in cases:
        row = rows[c["pid"]]
        prediction = mathvista.normalize_extraction(c["extraction"], row, "official")
        if prediction != c["official_prediction"] or (prediction == row["answer"]) != c["official_correct"]:
            mismatches.append((c, prediction))
    assert not mismatches, mismatches[:5]


def test_quick_rules_reproduce_official_extraction(rows, official):
    cases = [c for c in official if c["kind"] == "quick"]
    assert len(cases) == 800
    mismatches = [c for c in cases if mathvista.quick_extract(c["response"], rows[c["pid"]]) != c["official_quick"]]
    assert not mismatches, mismatches[:5]


def test_levenshtein_distance():
    assert mathvista.levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert mathvista.levenshtein("", "abc") == 3
    assert mathvista.levenshtein("flaw", "lawn") == 2  # -f, +n
    # Ties go to the first choice at the minimal distance, as the official get_most_similar's list.index does.
    assert mathvista.most_similar_choice("", ["Yes", "No"]) == "No"  # 3 vs 2
    assert mathvista.most_similar_choice("x", ["ab", "cd"]) == "ab"


@pytest.mark.parametrize(
    "pid,extraction,official_prediction,strict_prediction",
    [
        # pid 5: choices ['97', '102', '107', '122'], answer '97'
        ("5", "A", "97", "97"),
        ("5", "(a) 97", "97", "97"),  # "(X)" anywhere means letter X
        ("5", "97", "97", "97"),
        # official: "A." is 2 edits from "97" (substitute both), 3 from the others; strict reads "A." as letter A
        ("5", "A.", "97", "97"),
        ("5", "I don't know", "97", None),  # 12 edits from every choice: the first wins, and it is right
        ("5", "", "97", None),  # the shortest choice is nearest to nothing: an empty answer scores
        ("5", "96", "97", None),  # 1 edit from "97"; strict: 96 names no choice
        # pid 65: choices ['Yes', 'No']; strict still maps a case variant of a choice's text to it
        ("65", "yes", "Yes", "Yes"),
        # official: "Option A" shares no character with "Yes" (8 edits) and its "o" with "No" (7): "No";
        # strict reads it as letter A
        ("65", "Option A", "No", "Yes"),
    ],
)
def test_strict_mode_drops_only_the_nearest_choice_fallback(rows, pid, extraction, official_prediction, strict_prediction):
    row = rows[pid]
    assert mathvista.normalize_extraction(extraction, row, "official") == official_prediction
    assert mathvista.normalize_extraction(extraction, row, "strict") == strict_prediction


def test_float_and_integer_normalisation_follow_python_semantics(rows):
    # pid 1: float, precision 1, answer '1.2'
    assert mathvista.normalize_extraction("1.25", rows["1"], "official") == "1.2"  # round-half-even on binary 1.25
    assert mathvista.normalize_extraction("1.26", rows["1"], "official") == "1.3"
    assert mathvista.normalize_extraction("1.2 m", rows["1"], "official") is None
    # pid 44: integer, answer '18'
    assert mathvista.normalize_extraction("18.9", rows["44"], "official") == "18"  # int() truncates
    assert mathvista.normalize_extraction("1e400", rows["44"], "official") is None  # int(inf) overflows


def test_score_uses_the_stored_extraction_or_extracts_from_the_response(rows):
    row = dict(rows["44"], extraction="18")
    assert mathvista.score(row, "ignored response", "strict") == ("18", True, "18")
    row = dict(rows["44"])
    assert mathvista.score(row, "Counting them gives \\boxed{18}.", "strict") == ("18", True, "18")
    assert mathvista.score(row, "There are 18 people.", "strict") == ("18", True, "18")  # the last number
    mc = dict(rows["5"])
    assert mathvista.score(mc, "The answer is (A).", "strict") == ("97", True, "A")
    assert mathvista.score(mc, "hmm", "strict") == (None, False, "")
