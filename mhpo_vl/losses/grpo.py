"""GRPO: the PPO clipped surrogate with group-relative advantages (Shao et al. 2024; METHOD.md "GRPO / PPO clip").

Per token: ``loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` = ``max(-r A, -clip(r) A)``.
Optional dual clip (Ye et al. 2020, as in verl): for A < 0 the per-token loss is capped at ``-A * c_dual``.
Default aggregation: seq-mean-token-mean (the GRPO paper's ``1/K sum_i 1/T_i sum_t``).

Parameters: ``eps_low`` = ``eps_high`` = 0.2; ``eps`` is a shorthand that sets both (giving ``eps`` together with
``eps_low`` or ``eps_high`` is an error); ``dual_clip`` (False) and ``c_dual`` (3.0, must be > 1).

Numerical safety: r = exp(clamp(log r, -20, 20)). For |log r| <= 20 the value and gradient are exact. Beyond:
- log r > 20, A > 0: the clipped branch is active, loss = -(1 + eps_high) A with zero gradient: exact.
- log r > 20, A < 0, dual clip on: loss = c_dual |A| with zero gradient: exact.
- log r > 20, A < 0, dual clip off: the exact loss would be |A| e^{log r} (e^{1e5} overflows to inf); we return
  |A| e^20 (~4.9e8 |A|) with zero gradient instead of e^{log r} |A|. This is the one inexact case, by design.
- log r < -20, A < 0: clipped branch, loss = (1 - eps_low) |A|, zero gradient: exact.
- log r < -20, A > 0: loss = -e^{-20} A instead of -e^{log r} A (off by < 2.1e-9 |A|), gradient 0 instead of
  -e^{log r} A (smaller than 2.1e-9 |A| in size).
- A = 0: loss 0, gradient 0.

Diagnostics: ``clip_frac_low`` = fraction of valid tokens with r < 1 - eps_low AND A < 0 (the lower clip binds:
the min picks the constant (1 - eps_low) A); ``clip_frac_high`` = fraction with r > 1 + eps_high AND A > 0;
with dual clip also ``dual_clip_frac`` = fraction with A < 0 and r > c_dual (the cap binds).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .base import (
    LossInput,
    LossSpec,
    TokenLoss,
    clamped_ratio,
    clip_epsilon,
    flag,
    greater_than_one,
    masked_fraction,
)


def clipped_surrogate(
    ratio_NT: Tensor,
    inp: LossInput,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip: bool = False,
    c_dual: float = 3.0,
) -> TokenLoss:
    """PPO clip on a given ratio (token ratio for GRPO/DAPO, sequence ratio in token form for GSPO)."""
    advantages_NT = inp.advantages_NT
    unclipped_NT = -advantages_NT * ratio_NT
    clipped_NT = -advantages_NT * ratio_NT.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss_NT = torch.maximum(unclipped_NT, clipped_NT)
    if dual_clip:
        loss_NT = torch.where(advantages_NT < 0, torch.minimum(loss_NT, -advantages_NT * c_dual), loss_NT)
    with torch.no_grad():
        metrics = {
            "clip_frac_low": masked_fraction((ratio_NT < 1.0 - eps_low) & (advantages_NT < 0), inp),
            "clip_frac_high": masked_fraction((ratio_NT > 1.0 + eps_high) & (advantages_NT > 0), inp),
        }
        if dual_clip:
            metrics["dual_clip_frac"] = masked_fraction((ratio_NT > c_dual) & (advantages_NT < 0), inp)
    return TokenLoss(loss_NT, metrics)


def token_loss(inp: LossInput, *, eps_low: float, eps_high: float, dual_clip: bool, c_dual: float) -> TokenLoss:
    """GRPO / DAPO per-token loss on the token ratio r = pi_theta / pi_old."""
    ratio_NT = clamped_ratio(inp.log_ratio_NT)
    return clipped_surrogate(ratio_NT, inp, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, c_dual=c_dual)


def resolve_eps(given: Mapping[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """``eps`` sets both clip sides; combining it with a side-specific value is ambiguous, so it is refused."""
    eps = merged.pop("eps")
    if eps is not None:
        both = [name for name in ("eps_low", "eps_high") if name in given]
        if both:
            raise ValueError(f"eps sets both eps_low and eps_high; do not combine it with {', '.join(both)}")
        merged["eps_low"] = merged["eps_high"] = eps
    return merged


def clip_params(eps_low: float, eps_high: float) -> tuple:
    return (
        clip_epsilon("eps_low", eps_low),
        clip_epsilon("eps_high", eps_high),
        clip_epsilon("eps", None),
        flag("dual_clip", False),
        greater_than_one("c_dual", 3.0),
    )


SPEC = LossSpec(
    name="grpo",
    token_loss=token_loss,
    params=clip_params(0.2, 0.2),
    default_aggregation="seq-mean-token-mean",
    summary="PPO clip -min(r A, clip(r, 1-eps_low, 1+eps_high) A), eps 0.2/0.2, optional dual clip",
    resolve=resolve_eps,
)
