"""The format reward: ``<think>...</think>`` then a ``\\boxed{}`` answer (EasyR1's ``r"<think>.*</think>.*\\boxed\\{.*\\}.*"``
matched against the whole response).

Written with ``str.find`` rather than that regex: the same language, but linear on a megabyte response. Leading
whitespace is allowed (EasyR1's fullmatch would reject a response starting with a newline, which chat templates
sometimes produce). With ``require_think=False`` (models that answer without thinking tags) the format is just
"there is a ``\\boxed{`` followed later by a ``}``".
"""
from __future__ import annotations

THINK_OPEN, THINK_CLOSE, BOX_OPEN = "<think>", "</think>", "\\boxed{"


def _boxed_after(response: str, start: int) -> bool:
    box = response.find(BOX_OPEN, start)
    return box != -1 and response.find("}", box + len(BOX_OPEN)) != -1


def format_ok(response: str, require_think: bool = True) -> bool:
    if not require_think:
        return _boxed_after(response, 0)
    body = response.lstrip()
    if not body.startswith(THINK_OPEN):
        return False
    # The first "</think>" is the best choice for the regex's ".*": any later box also follows it.
    close = body.find(THINK_CLOSE, len(THINK_OPEN))
    return close != -1 and _boxed_after(body, close + len(THINK_CLOSE))
