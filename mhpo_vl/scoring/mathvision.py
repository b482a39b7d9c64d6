"""MathVision (MATH-V) scoring: the official rule-based matching, re-implemented without ``eval``.

The official scorer (mathllm/MATH-V ``evaluation/evaluate.py`` + ``evaluation/utils.py``) does, per row:
  1. answer-finding heuristics on the stripped response (a trailing " C." or a leading "C\\n" means C; "... is 12."
     means 12; the text after "the final answer is" / "the answer is" / "the correct answer is" / "the answer should
     be" up to the end of its line or sentence; with several boxes, the last one),
  2. ``find_math_answer``: lower-case, content of ``oxed{...}`` (greedy, to the LAST closing brace), the part after
     the last "=" / "\\approx", and a list of LaTeX clean-ups (``_strip_string``),
  3. ``is_equal(gold, answer) or is_equal(gold option text, answer)``: lower-cased string equality, then tuples
     evaluated element-wise, then ``round(eval(str(latex2sympy(x))), 2)`` equal on both sides.
Steps 1-2 are plain string work and reproduced as they are. Step 3's ``eval`` on model output is replaced by
``safe_eval`` (same values, no code execution), and ``latex2sympy`` is the ``latex2sympy2_extended`` parser that
math-verify ships (the official code uses the older ``latex2sympy2``, which pins an ANTLR runtime that conflicts
with math-verify's), with its input normalisation off and decimals turned into exact rationals as the old parser
does. Where the two parsers read an answer differently the verdict can differ: measured agreement is in
docs/scoring.md and tests/test_scoring_mathvision.py.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from mhpo_vl.scoring.safe_eval import safe_eval

REQUIRED_FIELDS: tuple[str, ...] = ("id", "answer", "options")

_FINAL_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")
# Applied in this order by find_math_answer after the box/equals selection.
_ANSWER_CLEANUPS = (
    (" ", ""), ("\\,", ""), ("∞", "\\infty"),
    ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
    ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"),
    ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""),
    ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""),
    ("{units}", ""), ("units", ""), ("{km}", ""), ("km", ""),
)
_STRIP_CLEANUPS = (
    ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
    ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""),
)
_LETTER_CLEANUPS = tuple((f"({c})", c) for c in "abcde") + tuple((f"{{{c}}}", c) for c in "abcde")
_BOXED_GREEDY = re.compile("oxed{(.*)}", flags=re.S)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_BARE_DECIMAL_POINT = re.compile(r"(\d)\.(?!\d)")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _replace_all(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def _braced_fracs(text: str) -> str:
    """"\\frac12" -> "\\frac{1}{2}", "\\frac1{2}" -> "\\frac{1}{2}"; a too-short tail returns the input unchanged."""
    head, *pieces = text.split("\\frac")
    out = head
    for piece in pieces:
        out += "\\frac"
        if piece[:1] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return text
        numerator, second, rest = piece[0], piece[1], piece[2:]
        out += "{" + numerator + "}" + ("{" + second + "}" if second != "{" else second) + rest
    return out


def _slash_fraction(text: str) -> str:
    """"3/4" -> "\\frac{3}{4}" when both sides are integers written canonically."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def _braced_sqrt(text: str) -> str:
    head, *pieces = text.split("\\sqrt")
    out = head
    for piece in pieces:
        if piece and piece[0] != "{":
            out += "\\sqrt{" + piece[0] + "}" + piece[1:]
        else:
            out += "\\sqrt" + piece
    return out


def _strip_string(text: str) -> str:
    text = _replace_all(text, _STRIP_CLEANUPS)
    text = text.split("\\text{ ")[0]  # units written as "\text{ cm}" on the right
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2:
        text = text.split("=")[-1]
    if len(text.split("\\approx")) == 2:
        text = text.split("\\approx")[-1]
    if "sqrt" in text:
        text = _braced_sqrt(text)
    text = text.replace(" ", "")
    if "sqrt" in text:
        text = _braced_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_fraction(text)


def find_math_answer(text: str) -> str:
    text = text.lower().replace("{}", "")
    boxed = _BOXED_GREEDY.findall(text)
    answer = boxed[-1] if boxed else text
    close, open_ = answer.find("}"), answer.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        answer = answer.split("}")[0]
    answer = answer.split("=")[-1].split("\\approx")[-1]
    return _strip_string(_replace_all(answer, _ANSWER_CLEANUPS))


def official_model_answer(response: str) -> str:
    """The answer string the official evaluate.py derives from a raw response."""
    answer = response.strip()
    for c in "ABCDE":
        if (
            answer.endswith(f" {c}.")
            or answer.endswith(f" ({c}).")
            or answer.startswith(f"{c}\n")
            or answer.startswith(f"({c})\n")
            or answer.startswith(f"({c}) {c}\n")
        ):
            answer = c
    after_is = answer.split("is ")[-1].rstrip(".")
    if is_number(after_is):
        answer = after_is
    if "oxed{" not in answer:
        for phrase in _FINAL_PHRASES:
            for variant in (phrase, phrase.replace("the", "The")):
                present = variant in answer
                answer = answer.split(variant)[-1].strip()
                if present:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = _replace_all(find_math_answer(answer), _LETTER_CLEANUPS)
    return answer.rstrip(".").lstrip(":").strip()


@functools.lru_cache(maxsize=1)
def _old_style_parser_class():
    """latex2sympy2_extended's converter, adjusted to read like the old latex2sympy2 the official code uses.

    The new parser reads an integer followed by a rational as a mixed number ("1\\frac{1}{2}" = 3/2, and even
    "3\\sqrt{4}" = 3 + 2) whatever its config says; the old one multiplies. Its internals are pinned by
    math-verify's exact pin of latex2sympy2_extended; tests/test_scoring_mathvision.py would catch a change.
    """
    import sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, _Latex2Sympy

    class OldStyleProducts(_Latex2Sympy):
        def convert_postfix_list(self, arr, i=0):
            if i >= len(arr) - 1:
                return super().convert_postfix_list(arr, i)
            res = self.convert_postfix(arr[i])
            if not isinstance(res, (sympy.Expr, sympy.MatrixBase)):
                return super().convert_postfix_list(arr, i)  # derivatives and the like: unchanged
            rh = self.convert_postfix_list(arr, i + 1)
            if getattr(res, "is_Matrix", False) or getattr(rh, "is_Matrix", False):
                return self.mat_mul_flat(res, rh)
            return self.mul_flat(res, rh)

    return OldStyleProducts, ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)


def latex_value(text: str) -> Any:
    """``eval(str(latex2sympy(text)))`` of the official code, with the safe evaluator. Raises where it would."""
    value, error = _cached_latex_value(text)
    if error is not None:
        raise ValueError(error)
    return value


@functools.lru_cache(maxsize=8192)
def _cached_latex_value(text: str) -> tuple[Any, str | None]:
    # ANTLR parsing costs ~10 ms; the same gold answers and common predictions come back again and again.
    try:
        return _latex_value(text), None
    except Exception as exc:  # kept as the error message: every caller treats any failure as "not equal"
        return None, f"{type(exc).__name__}: {exc}"


def _latex_value(text: str) -> Any:
    import sympy

    if "\\circ" in text:
        raise ValueError("the old latex2sympy2 cannot parse \\circ")  # the new one drops it: "120^\\circ" = 120
    text = _UNESCAPED_DOLLAR.sub("", text)  # the old grammar skips math-mode dollars anywhere; this parser does not
    text = _BARE_DECIMAL_POINT.sub(r"\1", text)  # "3." is 3 to the old grammar, an error to the new one
    parser_class, config = _old_style_parser_class()
    expr = parser_class(None, None, False, config=config).parse(text)
    if isinstance(expr, sympy.Basic) and expr.has(sympy.Float):
        # The old parser reads "4.8" as Rational(24, 5), not Float: same value, but str() and arithmetic differ.
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    return safe_eval(str(expr))


def _rounded_text(element: str) -> str:
    return str(round(latex_value(element), 2))


def evaluate_tuple(text: str) -> str:
    """"(2*3, 5+2)" -> "(6,7)": each element evaluated and rounded to 2 places; on any failure the input."""
    elements = text[1:-1].split(",")
    if not text or len(elements) < 2 or (text[0], text[-1]) not in (("(", ")"), ("[", "]")):
        return text
    try:
        values = [e if "infty" in e or e in ("a", "-a") else _rounded_text(e) for e in elements]
    except Exception:  # the official code returns the input on any failure; so do we
        return text
    return text[0] + ",".join(values) + text[-1]


def is_equal(answer: str, gold: str) -> bool:
    answer, gold = answer.lower(), gold.lower()
    if not answer.replace(" ", "") or not gold.replace(" ", ""):
        return False
    if gold.strip() == answer.strip():
        return True
    answer, gold = evaluate_tuple(answer), evaluate_tuple(gold)
    if gold == answer:
        return True
    try:
        return round(latex_value(gold), 2) == round(latex_value(answer), 2)
    except Exception:  # parse errors, unknown names, complex numbers, tuples: "not equal", as officially
        return False


def gold_option_text(row: dict) -> str:
    options = row["options"]
    if not options:
        return ""
    letter = str(row["answer"])
    index = ord(letter) - ord("A") if len(letter) == 1 else -1
    if not 0 <= index < len(options):
        raise ValueError(f"answer {letter!r} does not name one of the {len(options)} options")
    return options[index]


def score(row: dict, response: str) -> tuple[str, bool]:
    """(prediction, correct) for one MathVision row by the official rules."""
    prediction = official_model_answer(response)
    gold = str(row["answer"])
    return prediction, is_equal(gold, prediction) or is_equal(gold_option_text(row), prediction)
