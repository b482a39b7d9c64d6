"""MHPO: Modulated Hazard-aware Policy Optimization (Wang et al. 2026; METHOD.md "MHPO", paper Eqs. 3-12).

Per token, semi-gradient (stop-gradient ``sg`` on psi inside zeta):

    psi(r)  = c * tanh(log r / c)                                             Log-Fidelity Modulator (Eq. 5)
    zeta(p) = (softplus(p) / lambda_pos)^k_pos + (softplus(-p) / lambda_neg)^k_neg   Decoupled Hazard Penalty (Eq. 8)
    J       = exp(psi(r) - zeta(sg[psi(r)])) * A                              (Eq. 10)
    loss    = -aggregate(J)                          (paper: seq-mean-token-mean, -1/K sum_i 1/T_i sum_t J)

Gradient (Eq. 11): ``dJ / d log pi_theta = M(r) A`` with ``M(r) = exp(psi - zeta) * sech^2(log r / c)``, bounded
by exp(c^2 / 4) for every r (Eq. 12). Everything is computed from log r (exp(log r) is never formed), so any
finite log-ratio, +-1e5 included, gives a finite loss and gradient: tanh saturates and sech^2 underflows to 0.

Defaults (paper Sec. 4.1): c = 1.5, (k_pos, lambda_pos) = (1.5, 1.0), (k_neg, lambda_neg) = (2.0, 0.8).
Note zeta(0) = (ln 2 / lambda_pos)^k_pos + (ln 2 / lambda_neg)^k_neg ~ 1.328 at the defaults, so on-policy the
objective and its gradient carry the survival weight exp(-1.328) ~ 0.265 relative to GRPO: that is the paper's
formula as written, implemented as such, and reported as ``survival_weight_mean``.

Table 3's ablations are two more entries of the loss table, so a config or ``mhpo-vl study --losses`` names them
like any loss (one way each; ``mhpo`` itself keeps the Sec. 4.1 defaults and its parameter ranges):

- ``mhpo_lfm``, the hazard-free variant of Table 3(a) (LFM only; parameter ``c``, default 1.5):
  ``J = exp(psi(r)) A``. With no zeta there is nothing to stop the gradient of, so the gradient is the full one,
  ``dJ / d log pi_theta = M(r) A`` with ``M(r) = exp(psi) sech^2(log r / c)``: M(1) = 1 and J(1) = A (GRPO's
  on-policy value and gradient), peak M = exp(c t)(1 - t^2) at tanh(log r / c) = t = (sqrt(1 + c^2) - 1) / c
  (1.593 at log r = 0.896 for c = 1.5), still below exp(c^2 / 4). Survival weight 1, zeta 0 everywhere.
  A zero hazard is not spelt lambda = 0 (that would be an infinite hazard: H = (x / lambda)^k).
- ``mhpo_sym``, Table 3(b)/(c)'s symmetric hazards: ``mhpo`` with k_pos = k_neg = ``k`` and
  lambda_pos = lambda_neg = ``lam``; defaults are Table 3's best, c = 1.5, k = 3.0, lam = 0.8 (zeta(0) = 1.301,
  on-policy survival weight 0.272). The same numbers as ``mhpo`` with those four parameters set, bit for bit.

Speed: the per-token objective is one autograd Function that computes psi, zeta, J and M(r) A in the forward
pass and saves only M(r) A, so the backward pass is a single multiply (and M is already there for diagnostics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .base import LossInput, LossSpec, TokenLoss, masked_fraction, masked_max, masked_mean, positive

DEFAULTS = {"c": 1.5, "k_pos": 1.5, "lambda_pos": 1.0, "k_neg": 2.0, "lambda_neg": 0.8}
SYMMETRIC_DEFAULTS = {"c": 1.5, "k": 3.0, "lam": 0.8}  # Table 3's best symmetric hazards (mhpo_sym)


def lfm_psi(log_ratio: Tensor, c: float = DEFAULTS["c"]) -> Tensor:
    """Log-Fidelity Modulator psi = c tanh(log r / c): odd in log r, |psi| <= c, d psi / d r = 1 at r = 1."""
    return c * torch.tanh(log_ratio / c)


def dhp_zeta(
    psi: Tensor,
    k_pos: float = DEFAULTS["k_pos"],
    lambda_pos: float = DEFAULTS["lambda_pos"],
    k_neg: float = DEFAULTS["k_neg"],
    lambda_neg: float = DEFAULTS["lambda_neg"],
) -> Tensor:
    """Decoupled Hazard Penalty: Weibull cumulative hazards H(x) = (x / lambda)^k of softplus(+-psi).

    softplus(psi) ~ psi for psi >> 0 while softplus(-psi) -> 0, so the positive-shift hazard governs r > 1 and
    the negative-shift hazard governs r < 1. zeta > 0, so the survival weight exp(-zeta) lies in (0, 1].
    """
    return (F.softplus(psi) / lambda_pos) ** k_pos + (F.softplus(-psi) / lambda_neg) ** k_neg


def survival_weight(psi: Tensor, **hazard_params: float) -> Tensor:
    """w = exp(-zeta(psi)) in (0, 1]: how much the DHP attenuates a token."""
    return torch.exp(-dhp_zeta(psi, **hazard_params))


def grad_multiplier(log_ratio: Tensor, c: float = DEFAULTS["c"], **hazard_params: float) -> Tensor:
    """M(r) = exp(psi - zeta(psi)) sech^2(log r / c) = dJ / d log pi_theta divided by A (paper Eq. 11)."""
    tanh = torch.tanh(log_ratio / c)
    psi = c * tanh
    return torch.exp(psi - dhp_zeta(psi, **hazard_params)) * (1.0 - tanh * tanh)


def lfm_grad_multiplier(log_ratio: Tensor, c: float = DEFAULTS["c"]) -> Tensor:
    """M(r) = exp(psi) sech^2(log r / c) = dJ / d log pi_theta divided by A for the hazard-free J = exp(psi) A."""
    tanh = torch.tanh(log_ratio / c)
    return torch.exp(c * tanh) * (1.0 - tanh * tanh)


def on_policy_factor(**hazard_params: float) -> float:
    """exp(-zeta(0)): the survival weight of an on-policy token (r = 1, psi = 0), which multiplies MHPO's objective
    and gradient relative to GRPO's there; ~0.265 at the defaults. The study's GRPO control is scaled by it."""
    return float(survival_weight(torch.zeros((), dtype=torch.float64), **hazard_params))


def grad_multiplier_bound(c: float) -> float:
    """exp(c^2 / 4): the paper's bound on sup_r M(r) (Eq. 12); ~1.755 at c = 1.5."""
    return float(torch.tensor(c * c / 4.0, dtype=torch.float64).exp())


class _MHPOTokenLoss(torch.autograd.Function):
    """Per-token loss -J = -exp(psi - sg[zeta(psi)]) A, saving d(-J)/d log r = -M(r) A from the forward pass."""

    @staticmethod
    def forward(ctx, log_ratio_NT, advantages_NT, c, k_pos, lambda_pos, k_neg, lambda_neg):
        # Same formulas as lfm_psi / dhp_zeta / grad_multiplier, written with in-place ops to save allocations.
        tanh_NT = torch.div(log_ratio_NT, c).tanh_()
        psi_NT = tanh_NT * c
        zeta_NT = F.softplus(psi_NT).div_(lambda_pos).pow_(k_pos)
        zeta_NT += F.softplus(-psi_NT).div_(lambda_neg).pow_(k_neg)
        weight_NT = torch.sub(psi_NT, zeta_NT).exp_()  # the modulated, hazard-attenuated ratio
        # M(r) = weight * sech^2(log r / c), sech^2 = 1 - tanh^2 (d psi / d log r); tanh's buffer is reused
        multiplier_NT = tanh_NT.square_().neg_().add_(1.0).mul_(weight_NT)
        neg_advantages_NT = -advantages_NT
        ctx.save_for_backward(multiplier_NT * neg_advantages_NT)
        ctx.mark_non_differentiable(psi_NT, zeta_NT, multiplier_NT)
        return weight_NT * neg_advantages_NT, psi_NT, zeta_NT, multiplier_NT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss_NT, _grad_psi, _grad_zeta, _grad_multiplier):
        (loss_slope_NT,) = ctx.saved_tensors  # d loss / d log r = -M(r) A
        return grad_loss_NT * loss_slope_NT, None, None, None, None, None, None


def token_loss(
    inp: LossInput, *, c: float, k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float
) -> TokenLoss:
    loss_NT, psi_NT, zeta_NT, multiplier_NT = _MHPOTokenLoss.apply(
        inp.log_ratio_NT, inp.advantages_NT, c, k_pos, lambda_pos, k_neg, lambda_neg
    )
    with torch.no_grad():
        metrics = {
            "psi_mean": masked_mean(psi_NT, inp),
            "zeta_mean": masked_mean(zeta_NT, inp),
            "survival_weight_mean": masked_mean(torch.exp(-zeta_NT), inp),
            "grad_multiplier_mean": masked_mean(multiplier_NT, inp),
            "grad_multiplier_max": masked_max(multiplier_NT, inp, empty_value=0.0),
            "frac_logratio_beyond_c": masked_fraction(inp.log_ratio_NT.abs() > c, inp),
        }
    return TokenLoss(loss_NT, metrics)


class _LFMTokenLoss(torch.autograd.Function):
    """Hazard-free per-token loss -J = -exp(psi) A, saving d(-J)/d log r = -exp(psi) sech^2(log r / c) A."""

    @staticmethod
    def forward(ctx, log_ratio_NT, advantages_NT, c):
        tanh_NT = torch.div(log_ratio_NT, c).tanh_()
        psi_NT = tanh_NT * c
        weight_NT = psi_NT.exp()
        multiplier_NT = tanh_NT.square_().neg_().add_(1.0).mul_(weight_NT)  # exp(psi) sech^2
        neg_advantages_NT = -advantages_NT
        ctx.save_for_backward(multiplier_NT * neg_advantages_NT)
        ctx.mark_non_differentiable(psi_NT, multiplier_NT)
        return weight_NT * neg_advantages_NT, psi_NT, multiplier_NT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss_NT, _grad_psi, _grad_multiplier):
        (loss_slope_NT,) = ctx.saved_tensors
        return grad_loss_NT * loss_slope_NT, None, None


def lfm_token_loss(inp: LossInput, *, c: float) -> TokenLoss:
    """Table 3(a)'s hazard-free MHPO: J = exp(psi(r)) A (zeta = 0, survival weight 1)."""
    loss_NT, psi_NT, multiplier_NT = _LFMTokenLoss.apply(inp.log_ratio_NT, inp.advantages_NT, c)
    with torch.no_grad():
        metrics = {
            "psi_mean": masked_mean(psi_NT, inp),
            "zeta_mean": inp.num_tokens.new_zeros(()),
            "survival_weight_mean": inp.num_tokens.new_ones(()),
            "grad_multiplier_mean": masked_mean(multiplier_NT, inp),
            "grad_multiplier_max": masked_max(multiplier_NT, inp, empty_value=0.0),
            "frac_logratio_beyond_c": masked_fraction(inp.log_ratio_NT.abs() > c, inp),
        }
    return TokenLoss(loss_NT, metrics)


def sym_token_loss(inp: LossInput, *, c: float, k: float, lam: float) -> TokenLoss:
    """Table 3(b)/(c)'s symmetric hazards: :func:`token_loss` with (k, lam) for both directions."""
    return token_loss(inp, c=c, k_pos=k, lambda_pos=lam, k_neg=k, lambda_neg=lam)


SPEC = LossSpec(
    name="mhpo",
    token_loss=token_loss,
    params=tuple(positive(name, default) for name, default in DEFAULTS.items()),
    default_aggregation="seq-mean-token-mean",
    summary="exp(psi - sg zeta(psi)) A, psi = c tanh(log r / c), Weibull hazards of softplus(+-psi)",
)

LFM_SPEC = LossSpec(
    name="mhpo_lfm",
    token_loss=lfm_token_loss,
    params=(positive("c", DEFAULTS["c"]),),
    default_aggregation="seq-mean-token-mean",
    summary="hazard-free MHPO (Table 3a): exp(psi) A, psi = c tanh(log r / c)",
)

SYM_SPEC = LossSpec(
    name="mhpo_sym",
    token_loss=sym_token_loss,
    params=tuple(positive(name, default) for name, default in SYMMETRIC_DEFAULTS.items()),
    default_aggregation="seq-mean-token-mean",
    summary="MHPO with one (k, lam) for both hazards (Table 3b/c), best c 1.5, k 3.0, lam 0.8",
)

__all__ = ["lfm_psi", "dhp_zeta", "survival_weight", "on_policy_factor", "grad_multiplier", "grad_multiplier_bound",
           "lfm_grad_multiplier", "token_loss", "lfm_token_loss", "sym_token_loss", "SPEC", "LFM_SPEC", "SYM_SPEC"]
