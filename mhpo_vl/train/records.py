"""The typed records one RL step passes from phase to phase, in the order they are produced:

    Rollouts (sampler) -> ScoredRollouts (rewards, then advantages) -> OldLogprobs -> UpdateStats

Rows are in group order: the K samples of prompt b are rows b*K .. b*K+K-1. A `Group` is one prompt's K rows,
the unit dynamic sampling keeps, drops and repeats.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mhpo_vl.train.micro_batches import RowSize
from mhpo_vl.types import Completion, EncodedPrompt, Sample


@dataclass
class Rollouts:
    """The N = B*K sampled rows of one step."""

    prompts: list[EncodedPrompt]  # [N] (each prompt repeated K times)
    completions: list[Completion]  # [N]
    group_size: int

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def samples(self) -> list[Sample]:
        return [p.sample for p in self.prompts]

    def row_sizes(self) -> list[RowSize]:
        """Each row's prompt tokens (image placeholders expanded) and response tokens, for micro-batch planning."""
        return [RowSize(len(p.prompt_token_ids), len(c.token_ids)) for p, c in zip(self.prompts, self.completions)]


@dataclass(frozen=True)
class Group:
    """One prompt's K rows with their scores and advantages."""

    prompts: list[EncodedPrompt]
    completions: list[Completion]
    rewards_K: torch.Tensor
    accuracy_K: torch.Tensor
    format_K: torch.Tensor
    advantages_K: torch.Tensor

    @property
    def informative(self) -> bool:
        """The rewards differ, so the group's advantages are not all 0 (DAPO keeps only these)."""
        return float(self.rewards_K.max() - self.rewards_K.min()) > 0


@dataclass(frozen=True)
class ScoredRollouts:
    """Rollouts with their rewards (and, once computed, their group-relative advantages)."""

    rollouts: Rollouts
    rewards_N: torch.Tensor
    accuracy_N: torch.Tensor
    format_N: torch.Tensor
    advantages_N: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def __len__(self) -> int:
        return len(self.rollouts)

    @property
    def group_size(self) -> int:
        return self.rollouts.group_size

    def with_advantages(self, advantages_N: torch.Tensor) -> ScoredRollouts:
        return replace(self, advantages_N=advantages_N)

    def groups(self) -> list[Group]:
        K, r = self.group_size, self.rollouts
        return [Group(r.prompts[s], r.completions[s], self.rewards_N[s], self.accuracy_N[s], self.format_N[s],
                      self.advantages_N[s])
                for s in (slice(g * K, (g + 1) * K) for g in range(len(r) // K))]

    @staticmethod
    def from_groups(groups: list[Group], group_size: int) -> ScoredRollouts:
        rollouts = Rollouts([p for g in groups for p in g.prompts], [c for g in groups for c in g.completions],
                            group_size)
        return ScoredRollouts(rollouts, torch.cat([g.rewards_K for g in groups]),
                              torch.cat([g.accuracy_K for g in groups]), torch.cat([g.format_K for g in groups]),
                              torch.cat([g.advantages_K for g in groups]))


@dataclass
class OldLogprobs:
    """Per-row logprobs of the policy that sampled (and of the reference model, with a KL term), [N] of [T_i]."""

    old: list[torch.Tensor]
    ref: list[torch.Tensor] | None = None
    entropy_mean: float = float("nan")  # over every rank's response tokens
    sampler_diff_mean: float = float("nan")  # |sampler - trainer| logprob per token, all ranks (NaN: no sampler
    sampler_diff_max: float = float("nan")   # logprobs to compare)
    padding_fraction: float = float("nan")  # of the collated token slots of this rank's old-logprob pass


@dataclass
class UpdateStats:
    """What the policy update did: its logged metrics and each minibatch's loss (summed over ranks)."""

    metrics: dict[str, float]
    minibatch_losses: list[float]
    applied: int
    skipped: int
