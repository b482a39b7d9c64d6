"""DAPO (Yu et al. 2025; METHOD.md "DAPO"): the GRPO clipped objective with clip-higher bounds and token-mean.

Per token ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with eps_low = 0.2, eps_high = 0.28 (a higher upper
bound leaves room to raise low-probability tokens), aggregated over the whole batch by token-mean
``L = sum_{i,t} l_it / sum_i T_i``. Same parameters, clamp behaviour and diagnostics as :mod:`.grpo`.
The rest of the DAPO recipe (dynamic sampling, overlong penalty) belongs to the sampler and reward, not the loss;
:func:`mhpo_vl.train.advantages.zero_variance_groups` marks the groups dynamic sampling drops.
"""
from __future__ import annotations

from . import grpo
from .base import LossSpec

SPEC = LossSpec(
    name="dapo",
    token_loss=grpo.token_loss,
    params=grpo.clip_params(0.2, 0.28),
    default_aggregation="token-mean",
    summary="clip-higher PPO clip, eps 0.2/0.28, token-mean aggregation",
    resolve=grpo.resolve_eps,
)
