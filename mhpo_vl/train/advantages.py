"""Group-relative advantages (GRPO, Shao et al. 2024; METHOD.md "Group-relative advantage"). Pure functions.

    A_i = (R_i - mean(R_group)) / (std(R_group) + eps)        shared by every token of response i

Peers differ in details, each a switch here:
- verl: ``eps=1e-6``, unbiased std (the defaults here),
- TRL: ``eps=1e-4`` (unbiased std as well),
- Dr. GRPO: no std division, ``std_normalize=False`` (A_i = R_i - mean).
A group whose rewards are all equal (a "zero-variance" group, which DAPO's dynamic sampling drops) gets A = 0
exactly, never NaN and never the tiny non-zero that floating-point ``R - mean`` can leave.

Rewards come either as ``rewards_BK`` (B groups of K samples) or flat ``rewards_N`` with ``group_size=K`` and the
K samples of each prompt contiguous (rows [b*K, (b+1)*K) belong to prompt b). Advantages come back flat, [N].
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _as_groups(rewards: Tensor | Sequence[float], group_size: int | None) -> Tensor:
    """rewards_BK as float64 (exact means for the zero-variance test), checked."""
    rewards = torch.as_tensor(rewards)
    if rewards.dim() == 2:
        if group_size is not None and group_size != rewards.shape[1]:
            raise ValueError(f"rewards are [B, K] = {list(rewards.shape)} but group_size={group_size}")
        rewards_BK = rewards
    elif rewards.dim() == 1:
        if group_size is None:
            raise ValueError("flat rewards [N] need group_size=K (samples per prompt)")
        if not isinstance(group_size, int) or group_size < 1 or rewards.shape[0] % group_size:
            raise ValueError(f"group_size={group_size!r} must be a positive int dividing N={rewards.shape[0]}")
        rewards_BK = rewards.reshape(-1, group_size)
    else:
        raise ValueError(f"rewards must be [B, K] or [N] (with group_size), got shape {list(rewards.shape)}")
    if rewards_BK.shape[1] < 2:
        raise ValueError(f"group-relative advantages need at least 2 samples per group, got K={rewards_BK.shape[1]}")
    rewards_BK = rewards_BK.to(torch.float64)
    bad = ~torch.isfinite(rewards_BK)
    if bad.any():
        group, sample = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"reward of group {group}, sample {sample} (row {group * rewards_BK.shape[1] + sample}) is "
            f"{rewards_BK[group, sample].item()}: rewards must be finite"
        )
    return rewards_BK


def zero_variance_groups(rewards: Tensor | Sequence[float], group_size: int | None = None) -> Tensor:
    """Boolean [B]: groups whose K rewards are all equal (exactly; their advantages are 0)."""
    rewards_BK = _as_groups(rewards, group_size)
    return rewards_BK.amax(dim=1) == rewards_BK.amin(dim=1)


def count_zero_variance_groups(rewards: Tensor | Sequence[float], group_size: int | None = None) -> int:
    """How many groups carry no learning signal (all K rewards equal)."""
    return int(zero_variance_groups(rewards, group_size).sum())


def group_advantages(
    rewards: Tensor | Sequence[float],
    group_size: int | None = None,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
    unbiased_std: bool = True,
) -> Tensor:
    """advantages_N = (R - group mean) / (group std + eps), or R - group mean when ``std_normalize=False``.

    Returned in the rewards' floating dtype (float32 for integer or bool rewards); computed in float64.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    rewards_in = torch.as_tensor(rewards)
    out_dtype = rewards_in.dtype if rewards_in.is_floating_point() else torch.float32
    rewards_BK = _as_groups(rewards_in, group_size)
    centred_BK = rewards_BK - rewards_BK.mean(dim=1, keepdim=True)
    if std_normalize:
        std_B1 = rewards_BK.std(dim=1, keepdim=True, correction=1 if unbiased_std else 0)
        # eps = 0 is allowed; the zero-variance rows it would divide by zero are replaced below.
        advantages_BK = centred_BK / (std_B1 + eps)
    else:
        advantages_BK = centred_BK
    flat_B1 = (rewards_BK.amax(dim=1) == rewards_BK.amin(dim=1)).unsqueeze(1)
    advantages_BK = torch.where(flat_B1, 0.0, advantages_BK)
    return advantages_BK.reshape(-1).to(out_dtype)
