"""GSPO: sequence-level importance ratio (Zheng et al. 2025; METHOD.md "GSPO").

``s_i = exp(1/T_i sum_t log r_it)`` (the geometric mean of the token ratios over the valid tokens of row i),
clipped to ``[1 - eps_low, 1 + eps_high]`` with eps_low = 3e-4, eps_high = 4e-4. Token form (verl, EasyR1):

    log s_it = log pi_theta(t) - sg[log pi_theta(t)] + sg[log s_i]

so every token of row i carries the VALUE s_i while its gradient is s_i * d log pi_theta(t): per token
``-min(s_it A, clip(s_it) A)``. With the default seq-mean-token-mean aggregation the loss is GSPO's
``-1/G sum_i min(s_i A_i, clip(s_i) A_i)`` and its gradient ``-1/G sum_i s_i A_i 1/T_i sum_t grad log pi`` on the
unclipped side; at r = 1 that is exactly GRPO's gradient.

Parameters: ``eps_low`` (3e-4), ``eps_high`` (4e-4), ``eps`` sets both. No dual clip (GSPO defines none).
Numerical safety: ``log s_it`` is clamped to +-20 before the exp, with the same consequences as in :mod:`.grpo`
(here for the sequence ratio). A fully masked row has s_i = 1 and weight 0.
Diagnostics: ``clip_frac_low/high`` as in GRPO but on s_i (fractions of valid tokens, so long rows count more),
``seq_ratio_mean`` = mean of s_i over non-empty rows.
"""
from __future__ import annotations

import torch

from . import grpo
from .base import LossInput, LossSpec, TokenLoss, clamped_ratio, clip_epsilon


def token_loss(inp: LossInput, *, eps_low: float, eps_high: float) -> TokenLoss:
    log_ratio_NT = inp.log_ratio_NT
    with torch.no_grad():
        tokens_per_row_N = inp.mask_float_NT.sum(-1)
        # log_ratio is 0 at masked tokens, so a plain row sum is the masked sum.
        log_seq_ratio_N = log_ratio_NT.sum(-1) / tokens_per_row_N.clamp(min=1)
    # value log s_i, gradient 1 w.r.t. log pi_theta(t) (log_ratio carries the policy logprob's gradient)
    log_seq_ratio_NT = log_ratio_NT - log_ratio_NT.detach() + log_seq_ratio_N.unsqueeze(-1)
    seq_ratio_NT = clamped_ratio(log_seq_ratio_NT)
    out = grpo.clipped_surrogate(seq_ratio_NT, inp, eps_low=eps_low, eps_high=eps_high)
    with torch.no_grad():
        non_empty_N = tokens_per_row_N > 0
        seq_ratio_N = clamped_ratio(log_seq_ratio_N)
        out.metrics["seq_ratio_mean"] = (seq_ratio_N * non_empty_N).sum() / non_empty_N.sum().clamp(min=1)
    return out


SPEC = LossSpec(
    name="gspo",
    token_loss=token_loss,
    params=(clip_epsilon("eps_low", 3e-4), clip_epsilon("eps_high", 4e-4), clip_epsilon("eps", None)),
    default_aggregation="seq-mean-token-mean",
    summary="sequence-level ratio s_i = exp(mean_t log r), clipped to [1-3e-4, 1+4e-4], token form",
    resolve=grpo.resolve_eps,
)
