"""Prompt templates on real fixture rows: exact strings, written out by hand from the official formats."""
from __future__ import annotations

import pytest

from mhpo_vl.datasets import load_dataset
from mhpo_vl.prompts import TEMPLATES, get_template, load_template
from mhpo_vl.types import Sample


@pytest.fixture(scope="module")
def mathvista(fixtures_dir):
    return {s.id: s for s in load_dataset("mathvista", str(fixtures_dir / "mathvista"), require_images=False)}


def test_mathvista_official_query(mathvista):
    # pid 28 (multi_choice): hint for option letters, question, lettered choices (build_query.py format).
    assert get_template("mathvista").render(mathvista["28"]) == (
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: $\\overline{AB}$ is a diameter, $AC=8$ inches, and $BC=15$ inches. Find the radius of the circle.\n"
        "Choices:\n(A) 7.5\n(B) 8\n(C) 8.5\n(D) 17"
    )
    # pid 2: integer answer with a unit.
    assert get_template("mathvista").render(mathvista["2"]) == (
        "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.\n"
        "Question: what is the total volume of the measuring cup? (Unit: g)"
    )
    # pid 1: float with precision 1.
    assert get_template("mathvista").render(mathvista["1"]).startswith(
        "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the "
        "final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: When a spring does work on an object,"
    )


def test_mathvision_instruction(fixtures_dir):
    samples = {s.id: s for s in load_dataset("mathvision", str(fixtures_dir / "mathvision"))}
    instruction = ('Please solve the problem step by step and put your answer in one "\\boxed{}". '
                   'If it is a multiple choice question, only one letter is allowed in the "\\boxed{}".')
    row6 = samples["6"]  # options literally A-E: drawn in the image, so not listed (as the official code does)
    assert get_template("mathvision").render(row6) == f"{instruction}\n{row6.question}\n"
    written = next(s for s in samples.values() if s.choices and not s.metadata["options_in_image"])
    expected_options = "".join(f"({letter}) {choice}\n" for letter, choice in zip("ABCDE", written.choices))
    assert get_template("mathvision").render(written) == f"{instruction}\n{written.question}\n{expected_options}"


def test_mathverse_query_cot(fixtures_dir):
    first = load_dataset("mathverse", str(fixtures_dir / "mathverse" / "testmini_text_only.json"))[0]
    rendered = get_template("mathverse").render(first)
    assert rendered == first.metadata["query_cot"]
    assert rendered.startswith("Please first conduct reasoning, and then answer the question and provide the correct "
                               "option letter, e.g., A, B, C, D, at the end.\nQuestion: As shown in the figure")
    # Built from the question type when the row has no query_cot (e.g. a geosynth problem).
    free = Sample(id="x", source="t", split="test", question="Find x.", answer="3", answer_type="integer")
    assert get_template("mathverse").render(free) == (
        "Please first conduct reasoning, and then answer the question and provide the final value, e.g., 1, 2.5, 300, "
        "at the end.\nQuestion: Find x.")
    # MathVerse choices are inside the question: the plain template does not list them twice.
    assert get_template("plain").render(first) == first.question


def test_reason_boxed_and_direct(fixtures_dir):
    geo = load_dataset("geometry3k", str(fixtures_dir / "geometry3k"))[1]  # id 12, choices 12/13/14/15
    assert get_template("reason_boxed").render(geo) == (
        "Find x. Assume that segments that appear to be tangent are tangent.\n(A) 12\n(B) 13\n(C) 14\n(D) 15 "
        "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
        "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
    )
    synth = load_dataset("geosynth", n=1, seed=0, difficulty=1)[0]
    assert get_template("direct_boxed").render(synth) == (
        "Lines AB and CD meet at O. Angle AOC = 35. Find angle BOD.\nAnswer with only the final answer in \\boxed{}.")
    assert get_template("plain").render(synth) == synth.question


def test_user_templates(tmp_path, fixtures_dir):
    geo = load_dataset("geometry3k", str(fixtures_dir / "geometry3k"))[0]  # id 11
    text = tmp_path / "mine.txt"
    text.write_text("Problem: {question}\n{choices}\nPut only the answer in \\boxed{}, e.g. $\\frac{a}{b}$.\n")
    template = load_template(text)
    assert template.name == "mine"
    assert template.render(geo) == (
        "Problem: In $\\odot X, A B=30, C D=30,$ and $m \\widehat{C Z}=40$. Find $m\\widehat{A B}$\n"
        "(A) 30\n(B) 40\n(C) 60\n(D) 80\nPut only the answer in \\boxed{}, e.g. $\\frac{a}{b}$.")
    free = Sample(id="x", source="t", split="test", question="1 + 1?", answer="2", answer_type="integer")
    assert template.render(free) == "Problem: 1 + 1?\nPut only the answer in \\boxed{}, e.g. $\\frac{a}{b}$."

    spec = tmp_path / "short.yaml"
    spec.write_text("name: short\ntemplate: \"{question} ({answer_type})\"\n")
    assert get_template(str(spec)).render(free) == "1 + 1? (integer)"

    bad = tmp_path / "bad.txt"
    bad.write_text("Solve it.")
    with pytest.raises(ValueError, match="must contain the \\{question\\} placeholder"):
        load_template(bad)
    with pytest.raises(ValueError, match="unknown prompt template 'cot'; valid names: reason_boxed, mathvista"):
        get_template("cot")
    assert set(TEMPLATES) == {"reason_boxed", "mathvista", "mathvision", "mathverse", "plain", "direct_boxed"}
