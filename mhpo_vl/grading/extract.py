"""Find the final answer in a model response.

Order of conventions, first hit wins:
  1. the last COMPLETE ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced; ``\\boxed 5`` also accepted),
  2. an explicit answer phrase, last occurrence: "final answer is X", "the answer is X", "Answer: X",
     "correct option is X" (what MathVista / MathVerse / MathVision prompts ask for when they do not ask for a box),
  3. only when the caller says the answer is a choice letter: a last line that names a letter ("C", "(C)", "C.",
     "C: 120°"),
  4. only when the caller says the answer is a number: the last number in the response (MathVista and MathVerse ask for
     "the final value ... at the end" without a box).
Anything else gives None: the grader then scores the response as wrong, never guesses.

Responses are cut to their last ``MAX_RESPONSE_CHARS`` characters first, so a megabyte response costs the same as a
long one (final answers sit at the end; a box opened before the cut and closed after it is lost, documented).
"""
from __future__ import annotations

import re

MAX_RESPONSE_CHARS = 65_536

# "The final answer is: $\boxed{..}$" is handled by the box rule; these phrases catch unboxed answers.
_ANSWER_PHRASE = re.compile(r"\b(?:answer|correct\s+(?:option|choice))\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
# A sentence ends at a newline, or at a period/semicolon followed by whitespace (a decimal point is not followed by one).
_SENTENCE_END = re.compile(r"\n|[.;!?](?=\s|$)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def tail(text: str, limit: int = MAX_RESPONSE_CHARS) -> str:
    return text if len(text) <= limit else text[-limit:]


def _matching_braces(text: str) -> dict[int, int]:
    """{index of "{": index of its "}"} for every balanced group, in one pass (escaped \\{ \\} are not groups).

    One pass, so a response with thousands of unclosed boxes costs O(n), not O(n) per box."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            matches[stack.pop()] = i
        i += 1
    return matches


_SPACED_ARGUMENT = re.compile(r"[ \t]+([^\s$]+)")


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}``/``\\fbox{}``; an unclosed one (a cut-off response) is skipped."""
    starts = sorted(
        ((m.start(), m.end()) for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)), reverse=True
    )
    if not starts:
        return None
    braces = _matching_braces(text)
    for _, after in starts:
        j = after
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            if j in braces:
                return text[j + 1 : braces[j]].strip()
            continue
        spaced = _SPACED_ARGUMENT.match(text, after)  # "\\boxed 5": up to the next space or math delimiter
        if spaced:
            return spaced.group(1)
    return None


def answer_after_phrase(text: str) -> str | None:
    """X in the last "answer is X" / "Answer: X", up to the end of its sentence."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    for m in reversed(matches):
        end = _SENTENCE_END.search(text, m.end())
        candidate = text[m.end() : end.start() if end else len(text)].strip()
        candidate = candidate.strip("*").strip()  # markdown bold around the answer
        if candidate.startswith("$") and candidate.endswith("$") and len(candidate) > 1:
            candidate = candidate.strip("$").strip()
        if candidate:
            return candidate
    return None


def last_line_letter(text: str) -> str | None:
    """The letter a final line names on its own: "C", "(C)", "C.", "**C**", "C: 120°", "(C) 120°", "Option C"."""
    from mhpo_vl.grading.choices import letter_of

    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return letter_of(lines[-1]) if lines else None


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_answer(response: str, *, expects_letter: bool = False, expects_number: bool = False, boxed_only: bool = False) -> str | None:
    """The final answer in ``response`` by the conventions in the module docstring; None when there is none."""
    text = tail(response)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    if boxed_only:
        return None
    phrase = answer_after_phrase(text)
    if phrase:
        return phrase
    if expects_letter:
        letter = last_line_letter(text)
        if letter:
            return letter
    if expects_number:
        return last_number(text)
    return None
