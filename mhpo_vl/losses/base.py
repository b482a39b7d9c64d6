"""Records, parameter validation and numerical helpers shared by every policy loss.

A loss is a pure function from a :class:`LossInput` to a :class:`TokenLoss` (prime-rl style): it returns the
per-token loss (the negated per-token objective of ``shared/papers/METHOD.md``) and its diagnostics as tensors.
Masking, dtype handling, aggregation and the KL term live in :mod:`mhpo_vl.losses.policy_loss`, once for all losses.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# exp() of a log-ratio is taken only after clamping it to +-LOG_RATIO_CLAMP (verl clamps the PPO log-ratio to
# +-20 the same way). Inside the clamp the value and gradient are exact; what happens beyond it is stated in each
# loss's docstring. e^20 ~ 4.9e8 and e^-20 ~ 2.1e-9.
LOG_RATIO_CLAMP = 20.0


def clamped_ratio(log_ratio_NT: Tensor) -> Tensor:
    """r = exp(clamp(log r, -20, 20)): finite for any input, exact for |log r| <= 20."""
    return torch.exp(log_ratio_NT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@dataclass(frozen=True)
class LossInput:
    """What a per-token loss sees. Every tensor is [N, T] in the compute dtype (float32, or float64 for float64 input).

    ``log_ratio_NT`` = logprobs - old_logprobs at valid tokens and exactly 0 at masked ones (so padding garbage,
    even -inf, never reaches an exp or a gradient); it carries the gradient to the policy logprobs.
    ``advantages_NT`` is broadcast from [N] when needed, 0 at masked tokens, and carries no gradient.
    """

    log_ratio_NT: Tensor
    advantages_NT: Tensor
    mask_NT: Tensor  # bool
    mask_float_NT: Tensor  # the same mask as 0./1. in the compute dtype
    num_tokens: Tensor  # 0-dim, valid tokens in this call, at least 1 (a divisor for masked means)


@dataclass(frozen=True)
class TokenLoss:
    """Per-token loss [N, T] (value at masked tokens is ignored) and diagnostics (0-dim tensors, no grad)."""

    loss_NT: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossOutput:
    """``loss``: 0-dim tensor to call backward on. ``metrics``: 0-dim tensors, never synced to the host here."""

    loss: Tensor
    metrics: dict[str, Tensor]


def masked_mean(values_NT: Tensor, inp: LossInput) -> Tensor:
    """Mean over the valid tokens (0 when there are none); one fused multiply-reduce pass."""
    return torch.dot(values_NT.reshape(-1), inp.mask_float_NT.reshape(-1)) / inp.num_tokens


def masked_fraction(condition_NT: Tensor, inp: LossInput) -> Tensor:
    """Fraction of valid tokens where a boolean condition holds."""
    return (condition_NT & inp.mask_NT).sum().to(inp.num_tokens.dtype) / inp.num_tokens


def masked_max(values_NT: Tensor, inp: LossInput, empty_value: float) -> Tensor:
    """Max over the valid tokens; ``empty_value`` when there are none."""
    if values_NT.numel() == 0:
        return values_NT.new_tensor(empty_value)
    best = torch.where(inp.mask_NT, values_NT, -math.inf).max()
    return torch.where(torch.isfinite(best), best, empty_value)


def masked_min(values_NT: Tensor, inp: LossInput, empty_value: float) -> Tensor:
    """Min over the valid tokens; ``empty_value`` when there are none."""
    if values_NT.numel() == 0:
        return values_NT.new_tensor(empty_value)
    least = torch.where(inp.mask_NT, values_NT, math.inf).min()
    return torch.where(torch.isfinite(least), least, empty_value)


# --------------------------------------------------------------------------------------------------------------
# Parameters: every loss declares its parameters with a default and an allowed range; build_loss checks them.


@dataclass(frozen=True)
class Param:
    """One named loss parameter: its default, its allowed range in words, and the check for that range."""

    name: str
    default: Any
    rule: str
    check: Callable[[Any], bool]

    def describe(self) -> str:
        return f"{self.name} ({self.rule}; default {self.default!r})"


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def positive(name: str, default: float) -> Param:
    return Param(name, default, "a finite number > 0", lambda v: _is_real(v) and v > 0)


def nonnegative(name: str, default: float) -> Param:
    return Param(name, default, "a finite number >= 0", lambda v: _is_real(v) and v >= 0)


def clip_epsilon(name: str, default: float | None) -> Param:
    rule = "a number with 0 <= eps < 1" + (" or None" if default is None else "")
    return Param(name, default, rule, lambda v: (v is None and default is None) or (_is_real(v) and 0 <= v < 1))


def greater_than_one(name: str, default: float) -> Param:
    return Param(name, default, "a finite number > 1", lambda v: _is_real(v) and v > 1)


def flag(name: str, default: bool) -> Param:
    return Param(name, default, "True or False", lambda v: isinstance(v, bool))


def choice(name: str, default: str, options: tuple[str, ...]) -> Param:
    return Param(name, default, "one of " + ", ".join(options), lambda v: v in options)


def optional_positive(name: str) -> Param:
    return Param(name, None, "None or a finite number > 0", lambda v: v is None or (_is_real(v) and v > 0))


@dataclass(frozen=True)
class LossSpec:
    """An entry of the loss table: the per-token loss function and the parameters it takes.

    ``token_loss(inp, **params) -> TokenLoss`` receives exactly the parameters in ``params`` (after ``resolve``).
    ``resolve(given, merged) -> merged`` may derive parameters from others (e.g. ``eps`` setting both clip sides).
    """

    name: str
    token_loss: Callable[..., TokenLoss]
    params: tuple[Param, ...]
    default_aggregation: str
    summary: str
    resolve: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]] | None = None


def validate_params(owner: str, declared: tuple[Param, ...], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``; ValueError naming every valid parameter on an unknown name or bad value."""
    by_name = {p.name: p for p in declared}
    valid_list = "; ".join(p.describe() for p in declared)
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ValueError(f"{owner}: unknown parameter(s) {', '.join(unknown)}. Valid parameters: {valid_list}")
    merged = {p.name: p.default for p in declared}
    for name, value in given.items():
        param = by_name[name]
        if not param.check(value):
            raise ValueError(f"{owner}: invalid {name}={value!r}: must be {param.rule}. Valid parameters: {valid_list}")
        merged[name] = value
    return merged
