"""Prompt templates, applied at run time to canonical Samples (never baked into the data).

    template = get_template("reason_boxed")      # or load_template("my_prompt.txt")
    user_text = template.render(sample)

Built-in templates:
  reason_boxed   EasyR1's Geometry3K format: think inside <think></think>, then the final answer in \\boxed{}
  mathvista      MathVista's official query: hint (by answer type / precision) + question (+ unit) + lettered choices
  mathvision     MATH-Vision's official instruction: boxed answer, one letter for multiple choice, options (A)-(E)
  mathverse      MathVerse's query_cot: reasoning instruction + "Question: ..." (choices are inside the question)
  plain          the question and lettered choices, nothing else
  direct_boxed   the question and choices, then "answer only in \\boxed{}": short, for tiny models
User templates are text (or YAML with a ``template:`` key) with placeholders {question}, {choices}, {unit},
{answer_type}; any other braces (``\\boxed{}``, LaTeX) are left as they are.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mhpo_vl.types import Sample

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PLACEHOLDERS = ("question", "choices", "unit", "answer_type")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class PromptTemplate:
    """A named way to turn a Sample into the user turn's text."""

    name: str
    render_fn: Callable[[Sample], str]

    def render(self, sample: Sample) -> str:
        return self.render_fn(sample)


def choice_lines(sample: Sample) -> list[str]:
    """``(A) text`` lines for multiple-choice rows; none when the choices are drawn in the image (options that are
    just their own letters) or already written inside the question (MathVerse)."""
    choices = sample.choices or []
    if not choices or choices == list(LETTERS[: len(choices)]) or sample.metadata.get("choices_in_question"):
        return []
    return [f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices)]


def _question_with_choices(sample: Sample) -> str:
    lines = choice_lines(sample)
    return sample.question.strip() + ("\n" + "\n".join(lines) if lines else "")


# EasyR1 examples/format_prompt/math.jinja (hiyouga/EasyR1), the prompt of its Geometry3K recipes.
EASYR1_MATH_SUFFIX = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def render_reason_boxed(sample: Sample) -> str:
    return f"{_question_with_choices(sample)} {EASYR1_MATH_SUFFIX}"


def render_plain(sample: Sample) -> str:
    return _question_with_choices(sample)


def render_direct_boxed(sample: Sample) -> str:
    return f"{_question_with_choices(sample)}\nAnswer with only the final answer in \\boxed{{}}."


def mathvista_hint(sample: Sample) -> str:
    """Hint texts of lupantech/MathVista evaluation/build_query.py (create_one_query, shot_type "solution").

    build_query covers precision 1 and 2; the Hugging Face ``query`` column also uses three decimal places, so the
    wording is generalised by the same pattern."""
    if sample.answer_type == "multiple_choice":
        return "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    if sample.answer_type == "integer":
        return "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
    if sample.answer_type == "float" and sample.precision:
        words = {1: "one decimal place", 2: "two decimal places", 3: "three decimal places"}.get(
            sample.precision, f"{sample.precision} decimal places")
        examples = {1: "1.2, 1.3, 1.4", 2: "1.23, 1.34, 1.45", 3: "1.234, 1.345, 1.456"}.get(sample.precision, "1.2, 1.3, 1.4")
        return (f"Hint: Please answer the question requiring a floating-point number with {words} and provide the final "
                f"value, e.g., {examples}, at the end.")
    if sample.answer_type == "list":
        return ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
                "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.")
    return "Hint: Please answer the question and provide the final answer at the end."


def render_mathvista(sample: Sample) -> str:
    """Hint first, as in the ``query`` column of AI4Math/MathVista (build_query.py puts it after the choices when it
    appends a "Solution:" cue; the released queries lead with it)."""
    question = f"Question: {sample.question.strip()}"
    if sample.unit:
        question += f" (Unit: {sample.unit})"
    parts = [mathvista_hint(sample), question]
    if sample.choices:
        parts.append("Choices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(sample.choices)))
    return "\n".join(parts)


# mathllm/MATH-V models/Qwen-VL.py (geninput) and evaluation/: options listed only when they are not literally A-E.
MATHVISION_INSTRUCTION = (
    'Please solve the problem step by step and put your answer in one "\\boxed{}". '
    'If it is a multiple choice question, only one letter is allowed in the "\\boxed{}".'
)


def render_mathvision(sample: Sample) -> str:
    options = "".join(f"{line}\n" for line in choice_lines(sample))
    return f"{MATHVISION_INSTRUCTION}\n{sample.question}\n{options}"


# ZrrSkywalker/MathVerse data/testmini.json, field query_cot (its two instruction variants, checked on all 788 rows
# of testmini_text_only.json: query_cot == instruction + "\nQuestion: " + question).
MATHVERSE_COT = {
    "multi-choice": "Please first conduct reasoning, and then answer the question and provide the correct option letter, "
                    "e.g., A, B, C, D, at the end.",
    "free-form": "Please first conduct reasoning, and then answer the question and provide the final value, "
                 "e.g., 1, 2.5, 300, at the end.",
}


def render_mathverse(sample: Sample) -> str:
    if sample.metadata.get("query_cot"):
        return sample.metadata["query_cot"]
    question_type = sample.metadata.get("question_type") or (
        "multi-choice" if sample.answer_type == "multiple_choice" else "free-form")
    return f"{MATHVERSE_COT.get(question_type, MATHVERSE_COT['free-form'])}\nQuestion: {_question_with_choices(sample)}"


TEMPLATES: dict[str, Callable[[Sample], str]] = {
    "reason_boxed": render_reason_boxed,
    "mathvista": render_mathvista,
    "mathvision": render_mathvision,
    "mathverse": render_mathverse,
    "plain": render_plain,
    "direct_boxed": render_direct_boxed,
}


def get_template(name: str) -> PromptTemplate:
    """A built-in template by name, or a user template file when ``name`` is a path to one."""
    if name in TEMPLATES:
        return PromptTemplate(name, TEMPLATES[name])
    if Path(name).suffix in (".txt", ".yaml", ".yml", ".jinja", ".md") and Path(name).is_file():
        return load_template(name)
    raise ValueError(f"unknown prompt template {name!r}; valid names: {', '.join(TEMPLATES)} (or a template file path)")


def load_template(path: str | Path) -> PromptTemplate:
    """A user template from a text file, or a YAML file with ``template:`` (and optional ``name:``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt template file not found: {path}")
    text = path.read_text(encoding="utf-8")
    name = path.stem
    if path.suffix in (".yaml", ".yml"):
        import yaml

        spec = yaml.safe_load(text)
        if not isinstance(spec, dict) or not isinstance(spec.get("template"), str):
            raise ValueError(f"{path}: a YAML prompt template needs a 'template:' string")
        unknown = sorted(set(spec) - {"template", "name"})
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: template, name")
        text, name = spec["template"], str(spec.get("name", name))
    return template_from_text(text, name=name, origin=str(path))


def template_from_text(text: str, *, name: str = "custom", origin: str = "<text>") -> PromptTemplate:
    if "{question}" not in text:
        raise ValueError(f"{origin}: a prompt template must contain the {{question}} placeholder "
                         f"(available: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    body = text.rstrip("\n")

    def render(sample: Sample) -> str:
        values = {
            "question": sample.question.strip(),
            "choices": "\n".join(choice_lines(sample)),
            "unit": sample.unit or "",
            "answer_type": sample.answer_type,
        }
        lines = []
        for line in body.split("\n"):
            alone = _PLACEHOLDER.fullmatch(line.strip())
            if alone and not values[alone.group(1)]:
                continue  # a line holding only {choices} vanishes for free-form rows instead of leaving a gap
            # Only our placeholders are substituted, so \boxed{} and LaTeX braces in the template stay untouched.
            lines.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
        return "\n".join(lines)

    return PromptTemplate(name, render)
