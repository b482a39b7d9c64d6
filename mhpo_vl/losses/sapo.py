"""SAPO: a soft, temperature-controlled gate instead of a hard clip (Gao et al. 2025; METHOD.md "SAPO").

Per-token objective ``f(r) A`` with ``f(r) = sigmoid(tau (r - 1)) * 4 / tau``; tau = tau_pos (1.0) when A > 0 and
tau_neg (1.05) otherwise (A = 0 contributes 0 whichever tau). The gradient w.r.t. log pi_theta is
``M(r) A`` with ``M(r) = 4 sigmoid(tau (r-1)) (1 - sigmoid(tau (r-1))) r``: M(1) = 1 (on-policy SAPO's gradient
equals GRPO's) and M decays smoothly on both sides instead of dropping to 0 at a clip boundary.
Default aggregation: seq-mean-token-mean.

Numerical safety: r = exp(clamp(log r, -20, 20)). For log r > 20 the gate is saturated (tau (r - 1) > 4.8e8):
f = 4 / tau exactly, gradient 0 (the exact gradient underflows to 0 too). For log r < -20 the value is off by
less than 1.7e-9 |A| and the gradient (exactly smaller than 1.7e-9 |A|) is returned as 0.
"""
from __future__ import annotations

import torch

from .base import LossInput, LossSpec, TokenLoss, clamped_ratio, positive


def soft_gate(ratio_NT: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """f(r) = sigmoid(tau (r - 1)) * 4 / tau."""
    return torch.sigmoid(tau * (ratio_NT - 1.0)) * (4.0 / tau)


def token_loss(inp: LossInput, *, tau_pos: float, tau_neg: float) -> TokenLoss:
    advantages_NT = inp.advantages_NT
    ratio_NT = clamped_ratio(inp.log_ratio_NT)
    tau_NT = torch.where(advantages_NT > 0, ratio_NT.new_tensor(tau_pos), ratio_NT.new_tensor(tau_neg))
    loss_NT = -advantages_NT * soft_gate(ratio_NT, tau_NT)
    return TokenLoss(loss_NT, {})


SPEC = LossSpec(
    name="sapo",
    token_loss=token_loss,
    params=(positive("tau_pos", 1.0), positive("tau_neg", 1.05)),
    default_aggregation="seq-mean-token-mean",
    summary="soft gate f(r) = sigmoid(tau (r-1)) 4/tau, tau_pos 1.0 / tau_neg 1.05",
)
