"""The callable that ``build_loss`` returns: input checks, masking, dtype, per-token loss, KL term, aggregation.

    fn = build_loss("mhpo", c=1.5)
    out = fn(logprobs_NT, old_logprobs_NT, advantages_N, mask_NT,
             ref_logprobs=None, global_num_tokens=None, global_num_seqs=None)
    out.loss.backward(); out.metrics["survival_weight_mean"]

Shapes: logprobs, old_logprobs, mask (and ref_logprobs) are [N, T]; advantages [N] (one per response) or [N, T].
mask holds 0/1 (bool, int or float). old_logprobs, ref_logprobs and advantages are treated as constants
(detached). Compute dtype: float64 for float64 logprobs, float32 otherwise (bf16/fp16 inputs are upcast: a bf16
log-ratio of two logprobs near -5 would carry ~3% ratio error); ``out.loss`` has the compute dtype and the
gradient flows back to ``logprobs`` in its own dtype.

Metrics (0-dim tensors, computed under no_grad, means over the valid tokens of THIS call):
``ratio_mean``/``ratio_min``/``ratio_max`` of r = exp(clamp(log r, +-20)) (all 1 when there is no valid token),
``policy_loss`` (the aggregated policy term, times ``scale``), ``kl_mean`` and ``kl_loss`` when ref_logprobs is given, plus the
loss's own diagnostics (clip fractions, MHPO's psi/zeta/survival/M statistics).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .aggregation import aggregate, token_weights
from .base import LossInput, LossOutput, LossSpec, clamped_ratio, masked_max, masked_mean, masked_min
from .kl import k3_kl


def _check_tensor(name: str, value: Any, shape: tuple[int, ...] | None, floating: bool) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (like logprobs), got {list(value.shape)}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def prepare_input(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[LossInput, Tensor]:
    """Checked, masked, compute-dtype LossInput, and the policy logprobs in the compute dtype (for the KL term)."""
    _check_tensor("logprobs", logprobs, None, floating=True)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T] (responses x tokens), got shape {list(logprobs.shape)}")
    shape_NT = tuple(logprobs.shape)
    _check_tensor("old_logprobs", old_logprobs, shape_NT, floating=True)
    _check_tensor("mask", mask, shape_NT, floating=False)
    _check_tensor("advantages", advantages, None, floating=True)
    if tuple(advantages.shape) not in (shape_NT[:1], shape_NT):
        raise ValueError(
            f"advantages must be [N] = {list(shape_NT[:1])} or [N, T] = {list(shape_NT)}, got {list(advantages.shape)}"
        )

    dtype = torch.float64 if logprobs.dtype == torch.float64 else torch.float32
    mask_NT = mask if mask.dtype == torch.bool else mask != 0
    policy_logprobs_NT = logprobs.to(dtype)
    log_ratio_NT = torch.where(mask_NT, policy_logprobs_NT - old_logprobs.detach().to(dtype), 0.0)
    advantages = advantages.detach().to(dtype)
    advantages_NT = advantages.unsqueeze(-1).expand(shape_NT) if advantages.dim() == 1 else advantages
    advantages_NT = torch.where(mask_NT, advantages_NT, 0.0)
    mask_float_NT = mask_NT.to(dtype)
    num_tokens = mask_float_NT.sum().clamp(min=1)
    return LossInput(log_ratio_NT, advantages_NT, mask_NT, mask_float_NT, num_tokens), policy_logprobs_NT


def ratio_metrics(inp: LossInput) -> dict[str, Tensor]:
    """Token importance-ratio statistics over valid tokens (min/max via the log-ratio: one exp per scalar)."""
    return {
        "ratio_mean": torch.where(inp.mask_NT.any(), masked_mean(clamped_ratio(inp.log_ratio_NT), inp), 1.0),
        "ratio_min": clamped_ratio(masked_min(inp.log_ratio_NT, inp, empty_value=0.0)),
        "ratio_max": clamped_ratio(masked_max(inp.log_ratio_NT, inp, empty_value=0.0)),
    }


@dataclass(frozen=True)
class PolicyLoss:
    """A configured loss: ``scale`` x (``spec.token_loss`` with ``params``, aggregated by ``aggregation``), plus
    kl_coef * KL. ``scale`` multiplies the policy term only: it stands for a different loss (e.g. GRPO times MHPO's
    on-policy factor), while the KL regulariser keeps the weight ``kl_coef`` says, whichever loss it is added to."""

    spec: LossSpec
    params: Mapping[str, Any]
    aggregation: str
    norm_length: float | None
    kl_coef: float
    scale: float = 1.0

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        *,
        ref_logprobs: Tensor | None = None,
        global_num_tokens: int | float | Tensor | None = None,
        global_num_seqs: int | float | Tensor | None = None,
    ) -> LossOutput:
        """Loss and metrics; see the module docstring, and :mod:`.aggregation` for the global normalisers."""
        if self.kl_coef > 0 and ref_logprobs is None:
            raise ValueError(f"loss {self.name!r} has kl_coef={self.kl_coef} > 0 but no ref_logprobs were passed")
        inp, policy_logprobs_NT = prepare_input(logprobs, old_logprobs, advantages, mask)
        token = self.spec.token_loss(inp, **self.params)
        weights_NT = token_weights(
            inp.mask_float_NT,
            self.aggregation,
            norm_length=self.norm_length,
            global_num_tokens=global_num_tokens,
            global_num_seqs=global_num_seqs,
        )
        policy_loss = aggregate(token.loss_NT, weights_NT)
        if self.scale != 1.0:  # skipped at 1 so the default loss stays bit-identical to the unscaled formula
            policy_loss = policy_loss * self.scale
        loss = policy_loss
        with torch.no_grad():
            metrics = {**ratio_metrics(inp), **token.metrics, "policy_loss": policy_loss.detach()}
        if ref_logprobs is not None:
            _check_tensor("ref_logprobs", ref_logprobs, tuple(logprobs.shape), floating=True)
            ref_NT = ref_logprobs.detach().to(policy_logprobs_NT.dtype)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.kl_coef > 0):
                kl_NT = k3_kl(policy_logprobs_NT, ref_NT, inp.mask_NT)
                kl_loss = aggregate(kl_NT, weights_NT)
            if self.kl_coef > 0:
                loss = policy_loss + self.kl_coef * kl_loss
            with torch.no_grad():
                metrics["kl_mean"] = masked_mean(kl_NT, inp)
                metrics["kl_loss"] = kl_loss.detach()
        return LossOutput(loss, metrics)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return (
            f"build_loss({self.name!r}, {settings}, aggregation={self.aggregation!r}, "
            f"norm_length={self.norm_length!r}, kl_coef={self.kl_coef!r}, scale={self.scale!r})"
        )
