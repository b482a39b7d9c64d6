"""KL-to-reference penalty, the k3 / "low-variance" estimator (Schulman, "Approximating KL divergence", 2020).

Per token, with d = log pi_ref - log pi_theta:  ``kl = exp(d) - d - 1  >= 0``, an unbiased estimate of
KL(pi_theta || pi_ref) under samples from pi_theta. Clamped exactly as verl's ``kl_penalty(..., "low_var_kl")``:
d to [-20, 20] before the exp, and the result to [-10, 10] (beyond either clamp the gradient is 0). It is added to
any policy loss as ``kl_coef * aggregate(kl)`` with the same aggregation as the policy term.
"""
from __future__ import annotations

import torch
from torch import Tensor

KL_LOG_RATIO_CLAMP = 20.0
KL_VALUE_CLAMP = 10.0


def k3_kl(logprobs_NT: Tensor, ref_logprobs_NT: Tensor, mask_NT: Tensor | None = None) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1 per token, with verl's clamps; the gradient flows into ``logprobs_NT``.

    With a boolean ``mask_NT`` the result is exactly 0 at masked tokens (padding values never reach the exp).
    """
    log_ref_ratio_NT = ref_logprobs_NT - logprobs_NT
    if mask_NT is not None:
        log_ref_ratio_NT = torch.where(mask_NT, log_ref_ratio_NT, 0.0)
    log_ref_ratio_NT = log_ref_ratio_NT.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    kl_NT = torch.exp(log_ref_ratio_NT) - log_ref_ratio_NT - 1.0
    return kl_NT.clamp(-KL_VALUE_CLAMP, KL_VALUE_CLAMP)
