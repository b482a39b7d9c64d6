"""Evaluate the text of a sympy expression as Python's ``eval`` would, without ``eval``.

The MathVision official scorer does ``eval(str(latex2sympy(answer)))`` in a module that ran ``from math import *``,
on model output. This walks the expression's AST instead and allows only numbers, arithmetic, and the names that
eval would have found there (the ``math`` module's public names, which shadow the builtins, plus the few builtins
sympy's printer can emit). Anything else raises, as a NameError/SyntaxError would have in the official code, and
the caller counts that as "not equal". Integer powers and factorials too large to compute in reasonable time
raise OverflowError instead of hanging (the official code would grind on them; no real answer is that big).
"""
from __future__ import annotations

import ast
import builtins
import math
import operator
from collections.abc import Callable
from typing import Any

_MAX_INT_POW_BITS = 100_000  # 2^100000 is a 30k-digit integer: fine; beyond that eval would just be slow
_MAX_FACTORIAL = 5_000

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _guarded_pow(base: Any, exponent: Any) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * max(abs(base), 2).bit_length() > _MAX_INT_POW_BITS:
            raise OverflowError("integer power too large to evaluate")
    return operator.pow(base, exponent)


def _guarded_factorial(n: Any) -> Any:
    if isinstance(n, int) and n > _MAX_FACTORIAL:
        raise OverflowError("factorial too large to evaluate")
    return math.factorial(n)


def _namespace() -> dict[str, Any]:
    names: dict[str, Any] = {name: getattr(builtins, name) for name in ("abs", "min", "max", "round", "int", "float", "pow", "sum")}
    names.update({k: v for k, v in vars(math).items() if not k.startswith("_")})  # `from math import *` shadows builtins
    names["factorial"] = _guarded_factorial
    names["pow"] = math.pow
    names.update({"True": True, "False": False})
    return names


_NAMES = _namespace()


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, complex, bool)):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _guarded_pow(left, right)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ValueError(f"operator {type(node.op).__name__} not allowed")
        return op(left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id not in _NAMES:
            raise NameError(f"name {node.id!r} is not defined")
        return _NAMES[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = _eval(node.func)
        if not callable(fn):
            raise TypeError(f"{node.func.id!r} is not callable")
        return fn(*[_eval(a) for a in node.args])
    raise ValueError(f"expression element {type(node).__name__} not allowed")


def safe_eval(text: str) -> Any:
    """Value of ``text`` under the rules in the module docstring; raises where eval would raise (or refuse)."""
    return _eval(ast.parse(text.strip(), mode="eval"))
