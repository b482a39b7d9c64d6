"""Policy losses, chosen by name from a plain table (METHOD.md has every formula).

    from mhpo_vl.losses import build_loss
    fn = build_loss("mhpo")                          # or "grpo", "dapo", "gspo", "sapo", with parameters;
                                                     # "mhpo_lfm", "mhpo_sym": Table 3's MHPO variants (mhpo.py)
    out = fn(logprobs_NT, old_logprobs_NT, advantages_N, mask_NT)   # -> LossOutput(loss, metrics)

Every loss accepts, besides its own parameters:
- ``aggregation``: token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (default: the loss's paper's),
- ``norm_length``: the constant of seq-mean-token-sum-norm (None -> the padded length T of each call),
- ``kl_coef``: weight of the k3 KL-to-reference term (default 0; > 0 requires ``ref_logprobs`` in the call),
- ``scale``: a constant multiplying the policy term only (default 1; the KL term keeps its own ``kl_coef``), so a
  control such as GRPO x exp(-zeta(0)) (MHPO's on-policy factor, :func:`mhpo.on_policy_factor`) can be run.
Unknown names, unknown parameters and out-of-range values raise ValueError listing what is valid.
"""
from __future__ import annotations

from typing import Any

from . import dapo, grpo, gspo, mhpo, sapo
from .aggregation import AGGREGATIONS
from .base import (
    LossInput,
    LossOutput,
    LossSpec,
    Param,
    TokenLoss,
    choice,
    nonnegative,
    optional_positive,
    positive,
    validate_params,
)
from .policy_loss import PolicyLoss

LOSSES: dict[str, LossSpec] = {
    "grpo": grpo.SPEC,
    "dapo": dapo.SPEC,
    "gspo": gspo.SPEC,
    "sapo": sapo.SPEC,
    "mhpo": mhpo.SPEC,
    "mhpo_lfm": mhpo.LFM_SPEC,  # Table 3(a): hazard-free, exp(psi) A
    "mhpo_sym": mhpo.SYM_SPEC,  # Table 3(b)/(c): one (k, lam) for both hazards, defaults c 1.5, k 3.0, lam 0.8
}


def common_params(default_aggregation: str) -> tuple[Param, ...]:
    """Parameters every loss takes (aggregation and KL are orthogonal to the choice of loss)."""
    return (
        choice("aggregation", default_aggregation, AGGREGATIONS),
        optional_positive("norm_length"),
        nonnegative("kl_coef", 0.0),
        positive("scale", 1.0),
    )


def loss_params(name: str) -> tuple[Param, ...]:
    """All parameters ``build_loss(name, ...)`` accepts, with defaults and ranges."""
    spec = _spec(name)
    return spec.params + common_params(spec.default_aggregation)


def build_loss(name: str, **params: Any) -> PolicyLoss:
    """The configured loss ``name`` (see LOSSES); ValueError on an unknown name or a bad/unknown parameter."""
    spec = _spec(name)
    merged = validate_params(f"loss {name!r}", loss_params(name), params)
    common = {p.name: merged.pop(p.name) for p in common_params(spec.default_aggregation)}
    if spec.resolve is not None:
        try:
            merged = spec.resolve(params, merged)
        except ValueError as err:
            raise ValueError(f"loss {name!r}: {err}") from None
    return PolicyLoss(spec=spec, params=merged, **common)


def _spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


__all__ = [
    "AGGREGATIONS",
    "LOSSES",
    "LossInput",
    "LossOutput",
    "LossSpec",
    "PolicyLoss",
    "TokenLoss",
    "build_loss",
    "loss_params",
]
