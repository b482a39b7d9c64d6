"""Multiple choice: map a prediction to a choice, by its letter or by its text, either way round.

Gold is the choice TEXT (Sample.answer) with the letter in metadata["answer_letter"] when the source has one.
A prediction may be "B", "(B)", "B.", "(B) 8/11", "B: 8/11", "Option B", "\\text{(B)}", or the text "8/11"
(or a form of it that is equivalent: "\\frac{8}{11}"). Letter forms win over text: "(B) 8/11" means B even
when 8/11 is choice C, as the MathVista official scorer also reads it.
"""
from __future__ import annotations

import re
import string

from mhpo_vl.grading.normalize import normalize_answer, unwrap_commands

LETTERS = string.ascii_uppercase

_LONE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_PAREN_LETTER_THEN_TEXT = re.compile(r"^\(([A-Za-z])\)\s*\S")
_LETTER_PUNCT_THEN_TEXT = re.compile(r"^([A-Z])[.:)]\s*\S")
_OPTION_WORD = re.compile(r"^(?:option|choice)\s*:?\s*\(?([A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE)


def letter_of(prediction: str, num_choices: int | None = None) -> str | None:
    """The choice letter a prediction names, upper-cased; None when it names none (or one past ``num_choices``)."""
    text = unwrap_commands(prediction.replace("$", ""), ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\boxed"))
    text = text.replace("**", "").strip()
    letter = None
    for pattern in (_LONE_LETTER, _PAREN_LETTER_THEN_TEXT, _LETTER_PUNCT_THEN_TEXT, _OPTION_WORD):
        m = pattern.match(text)
        if m:
            letter = m.group(1).upper()
            break
    if letter is None:
        return None
    if num_choices is not None and LETTERS.index(letter) >= num_choices:
        return None
    return letter


def gold_choice_index(answer: str, choices: list[str], answer_letter: str | None = None) -> int:
    """Index of the gold choice: the answer text among the choices, else the letter. Raises when neither names one."""
    if answer in choices:
        return choices.index(answer)
    normalized = [normalize_answer(c) for c in choices]
    if normalize_answer(answer) in normalized:
        return normalized.index(normalize_answer(answer))
    for candidate in (answer_letter, answer):
        if candidate and len(candidate.strip()) == 1 and candidate.strip().upper() in LETTERS[: len(choices)]:
            return LETTERS.index(candidate.strip().upper())
    raise ValueError(f"gold answer {answer!r} (letter {answer_letter!r}) is not one of the choices {choices!r}")


def predicted_choice_index(prediction: str, choices: list[str]) -> int | None:
    """Index of the choice the prediction names, or None.

    1. the prediction's text equals one choice's text (normalised, case-insensitive),
    2. the prediction names a letter,
    3. the prediction is mathematically equivalent to exactly one choice (math-verify; an ambiguous match is None).
    """
    norm_pred = normalize_answer(prediction).lower()
    if not norm_pred:
        return None
    norm_choices = [normalize_answer(c).lower() for c in choices]
    if norm_choices.count(norm_pred) == 1:
        return norm_choices.index(norm_pred)
    letter = letter_of(prediction, len(choices))
    if letter is not None:
        return LETTERS.index(letter)
    from mhpo_vl.grading.equivalence import answers_equivalent  # lazy: pulls in math-verify

    matches = [i for i, c in enumerate(choices) if answers_equivalent(c, prediction, "expression", None)]
    return matches[0] if len(matches) == 1 else None
