"""Is a predicted answer equivalent to the gold one?

1. equal canonical strings (normalize.py),
2. both plain numbers (integers, decimals, a/b, \\frac{a}{b}): compared as numbers, rounded to the sample's precision
   when it has one (Python's round, as MathVista's scorer does), else with a 1e-6 relative tolerance,
3. word answers ("Evelyn", "east"): case-insensitive string equality only. math-verify would read "Evelyn" as the
   product E*v*e*l*y*n and call "Evenly" equal to it; numbers in a base ("52_8"): same digits and same base
   (math-verify drops the subscript, so 52_8 would equal 52_13),
4. everything else: math-verify ``verify(gold, pred)`` (gold first: it is not symmetric) on both answers wrapped in
   ``\\boxed{}``, with a numeric check against the precision when the sample has one.

math-verify is called with its signal-based timeouts OFF (``parsing_timeout=None, timeout_seconds=None``): its
``signal.alarm`` raises outside the main thread, and a caller catching that turns every reward into 0. The hard
timeout lives one level up, in the process pool (pool.py), which kills a worker stuck in sympy.
"""
from __future__ import annotations

import functools
import logging
import math
import re

from mhpo_vl.grading.normalize import clean_answer, normalize_answer

_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_SLASH_FRACTION = re.compile(r"^([-+]?\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([-+]?)\\frac\{?([-+]?\d+)\}?\{?(\d+)\}?$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z' -]*[A-Za-z]$")
_BASE_NUMBER = re.compile(r"^([0-9A-Za-z]+)_\{?(\d+)\}?$")

_LOGGING_QUIETED = False


def _quiet_math_verify() -> None:
    # math-verify logs a warning on every call when its own timeouts are off; ours are in pool.py.
    global _LOGGING_QUIETED
    if not _LOGGING_QUIETED:
        for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils", "latex2sympy2_extended"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _LOGGING_QUIETED = True


def plain_number(answer: str) -> float | None:
    """The value of a normalised answer that is just a number or a simple fraction; None otherwise."""
    if _PLAIN_NUMBER.match(answer):
        return float(answer)
    m = _SLASH_FRACTION.match(answer)
    if m and int(m.group(2)) != 0:
        return int(m.group(1)) / int(m.group(2))
    m = _LATEX_FRACTION.match(answer)
    if m and int(m.group(3)) != 0:
        value = int(m.group(2)) / int(m.group(3))
        return -value if m.group(1) == "-" else value
    return None


def numbers_equal(gold: float, pred: float, precision: int | None) -> bool:
    if precision is not None:
        return round(pred, precision) == round(gold, precision)
    return math.isclose(gold, pred, rel_tol=1e-6, abs_tol=1e-9)


@functools.lru_cache(maxsize=4096)
def parse_latex(answer: str) -> tuple:
    """math-verify's parse of an answer string (cached: a GRPO group grades K responses against one gold)."""
    from math_verify import parse

    _quiet_math_verify()
    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def math_verify_equal(gold: str, pred: str) -> bool:
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed, pred_parsed = parse_latex(gold), parse_latex(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def numeric_value(answer: str) -> float | None:
    """A real number for an answer like "\\sqrt{2}" or "3\\pi" (via math-verify's parse); None when it is not one."""
    value = plain_number(answer)
    if value is not None:
        return value
    for parsed in parse_latex(answer):
        if hasattr(parsed, "is_number") and parsed.is_number:
            evaluated = complex(parsed.evalf())
            if evaluated.imag == 0:
                return evaluated.real
    return None


def is_word_answer(normalized: str) -> bool:
    """"Evelyn", "No", "well-known": letters only, with at least one run of two (so "p-q" is algebra, not a word)."""
    return bool(_WORDS.match(normalized)) and re.search(r"[A-Za-z]{2}", normalized) is not None


def answers_equivalent(gold: str, pred: str, answer_type: str = "expression", precision: int | None = None) -> bool:
    """True when ``pred`` is an acceptable form of ``gold`` (see the module docstring for the rules, in order)."""
    norm_gold, norm_pred = normalize_answer(gold), normalize_answer(pred)
    if not norm_pred or not norm_gold:
        return False
    if norm_gold == norm_pred:
        return True
    gold_base = _BASE_NUMBER.match(norm_gold)
    if gold_base:
        # "52_8": math-verify drops the subscript (52_8 == 52_13 == 52); the digits and the base must both match.
        pred_base = _BASE_NUMBER.match(norm_pred)
        return pred_base is not None and (pred_base.group(1).upper(), int(pred_base.group(2))) == (
            gold_base.group(1).upper(), int(gold_base.group(2)))
    if is_word_answer(norm_gold) or answer_type == "text" and not any(ch.isdigit() for ch in norm_gold):
        return norm_gold.lower() == norm_pred.lower()
    gold_number, pred_number = plain_number(norm_gold), plain_number(norm_pred)
    if gold_number is not None and pred_number is not None:
        if answer_type == "integer" and not float(pred_number).is_integer():
            return False
        return numbers_equal(gold_number, pred_number, precision)
    if precision is not None and gold_number is not None:
        pred_value = numeric_value(clean_answer(pred))
        return pred_value is not None and numbers_equal(gold_number, pred_value, precision)
    return math_verify_equal(clean_answer(gold), clean_answer(pred))
