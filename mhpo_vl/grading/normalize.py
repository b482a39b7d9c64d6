"""Canonical string form of an answer, so that "90^\\circ", "$90°$" and "90 degrees." compare equal as strings.

Only surface forms are removed here (delimiters, spacing macros, text wrappers, units, degree signs, percent signs,
a leading "x =", a trailing period, thousands separators); mathematical equivalence is equivalence.py's job.
The same function is applied to gold and prediction, so removing something from both sides is always symmetric.
"""
from __future__ import annotations

import re

# \text{...}-like wrappers whose content is kept.
_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mathit", "\\mbox", "\\operatorname", "\\boxed")

_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad\b|\\displaystyle\b|~")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°|掳|\bdegrees?\b", re.IGNORECASE)
# MathVerse stores "°" mis-decoded as "掳" (GBK mojibake) in some answers; it is a degree sign.

# Units are removed only when they follow a number or a closing brace/parenthesis, so a lone "m" answer stays.
_UNIT_WORDS = (
    r"square\s+units?|sq\.?\s*units?|units?|cubic\s+\w+|square\s+\w+|sq\.?\s*\w+"
    r"|mm|cm|km|m|kg|mg|g|ml|l|s|sec|seconds?|min|minutes?|h|hrs?|hours?|days?|weeks?|months?|years?"
    r"|inch(?:es)?|in|ft|feet|foot|yards?|yd|miles?|mi|meters?|metres?|centimeters?|centimetres?|kilometers?|kilometres?"
    r"|millimeters?|millimetres?|grams?|kilograms?|liters?|litres?|dollars?|cents?|mph|km/h|m/s|cm/s|radians?|rad|points?|people|persons?"
)
_TRAILING_UNIT = re.compile(
    r"(?<=[\d})\]])\s*(?:" + _UNIT_WORDS + r")(?:\s*\^\s*\{?\s*[23]\s*\}?|²|³)?\s*$", re.IGNORECASE
)
_ASSIGNMENT = re.compile(r"^\s*(?:\\angle\s*)?[A-Za-z][A-Za-z0-9_{}\\']{0,15}\s*=\s*(?P<rhs>[^=]+)$")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def unwrap_commands(text: str, commands: tuple[str, ...] = _WRAPPERS) -> str:
    """Replace ``\\cmd{X}`` by ``X`` for each wrapper command (braces balanced; unbalanced input is left as is)."""
    for command in commands:
        start = text.find(command + "{")
        while start != -1:
            open_at = start + len(command)
            depth = 0
            close_at = -1
            for i in range(open_at, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        close_at = i
                        break
            if close_at == -1:
                break
            text = text[:start] + text[open_at + 1 : close_at] + text[close_at + 1 :]
            start = text.find(command + "{", start)
    return text


def strip_math_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)].strip()
    return text.replace("$", "")


def clean_answer(answer: str) -> str:
    """The answer without its surface decorations, spaces kept (LaTeX needs them: "\\cot x" is not "\\cotx")."""
    s = strip_math_delimiters(str(answer).replace("\\$", ""))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\%", "").replace("%", "")
    s = _SPACING.sub(" ", s)
    s = unwrap_commands(s)
    s = _DEGREES.sub("", s)
    s = s.strip().rstrip(".").strip()
    # Units may stack ("5 cm^2", "3 m/s"): strip until nothing changes.
    while True:
        stripped = _TRAILING_UNIT.sub("", s).strip()
        if stripped == s:
            break
        s = stripped
    assignment = _ASSIGNMENT.match(s)
    if assignment:
        s = assignment.group("rhs").strip()
    if _THOUSANDS.match(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    return s


def normalize_answer(answer: str) -> str:
    """Canonical string form for string equality: cleaned and without any whitespace (case kept: "X" and "x" may
    be different variables)."""
    return re.sub(r"\s+", "", clean_answer(answer))
