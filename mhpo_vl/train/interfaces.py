"""The seams of the RL loop: what the trainer needs of each part it is given, as `typing.Protocol`s.

`build_trainer` makes every part from the config (mhpo_vl.train.parts) or takes the one it is given; anything that
has these methods and attributes will do (tests give a fixed-completion sampler, a text-scored reward and a tiny
in-process LM: tests/test_trainer_fakes.py). The real parts: `mhpo_vl.rollout` (Sampler), `mhpo_vl.grading.reward`
(RewardFn), `mhpo_vl.losses` (LossFn), `mhpo_vl.distributed.Runtime` (Runtime), `mhpo_vl.collate.PromptEncoder`
(Encoder), `mhpo_vl.models.policy.LoadedPolicy` (Policy).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.runs.loggers import MetricsWriter
from mhpo_vl.runs.run_dir import RunDirectory
from mhpo_vl.types import Completion, EncodedPrompt, Sample

T = TypeVar("T")


@runtime_checkable
class Sampler(Protocol):
    """K completions per prompt with per-token sampler logprobs, and the weight sync into the engine."""

    def generate(self, prompts: list[EncodedPrompt], config: SamplingConfig) -> list[list[Completion]]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...


class Verdict(Protocol):
    """One graded response (mhpo_vl.grading.grader.Verdict has these and more)."""

    @property
    def correct(self) -> bool: ...

    @property
    def format_ok(self) -> bool: ...


class RewardResult(Protocol):
    """What a reward returns for a batch of responses (mhpo_vl.grading.reward.RewardOutput)."""

    @property
    def rewards(self) -> Sequence[float]: ...

    @property
    def verdicts(self) -> Sequence[Verdict]: ...


@runtime_checkable
class ReportsRewardMetrics(Protocol):
    """A reward result that also counts what went wrong while grading (RewardOutput.metrics(): `reward/timeouts`,
    `reward/grading_errors`); the trainer logs those counts every step. A user's reward function may return a
    result without it: then the counts are not logged (never a made-up 0)."""

    def metrics(self) -> dict[str, float]: ...


@runtime_checkable
class ReportsRewardComponents(Protocol):
    """A reward function whose results have named parts (a `reward.function` that returns a dict:
    mhpo_vl.grading.user_reward): their (sum, count) since the last call, logged as means `reward/fn/<name>` per
    step and `val/reward/fn/<name>` per validation."""

    def pop_component_totals(self) -> dict[str, tuple[float, float]]: ...


class RewardFn(Protocol):
    """``reward_fn(samples, responses, truncated=flags) -> RewardResult``: one reward per response."""

    def __call__(self, samples: list[Sample], responses: list[str],
                 truncated: list[bool] | None = None) -> RewardResult: ...


@runtime_checkable
class Closeable(Protocol):
    """A part that holds resources (the reward's grader pool, a sampler's engine): the trainer closes it."""

    def close(self) -> None: ...


class LossResult(Protocol):
    @property
    def loss(self) -> torch.Tensor: ...

    @property
    def metrics(self) -> dict[str, torch.Tensor]: ...


class LossFn(Protocol):
    """A policy loss (mhpo_vl.losses.PolicyLoss): per-token logprobs [N, T], old logprobs [N, T], advantages [N],
    response mask [N, T]; the reference logprobs (KL term) and the whole minibatch's token and sequence counts, so
    a loss over one micro-batch is its share of the minibatch's."""

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, /, *, ref_logprobs: torch.Tensor | None = None,
                 global_num_tokens: float | None = None, global_num_seqs: float | None = None) -> LossResult: ...


class Encoder(Protocol):
    """Samples -> prompts as the sampler and the trainer see them (chat template, image tokens, pixel values)."""

    def encode(self, samples: list[Sample]) -> list[EncodedPrompt]: ...


@runtime_checkable
class PromptMeasurer(Encoder, Protocol):
    """An encoder that can also measure a prompt before a run starts (mhpo_vl.collate.PromptEncoder): a run's
    datasets are checked against `max_prompt_length` when they load."""

    max_prompt_length: int

    def prompt_length(self, sample: Sample) -> int: ...


@runtime_checkable
class SavesPretrained(Protocol):
    """A model a checkpoint can hold: a transformers model (save_pretrained writes the folder vLLM loads)."""

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Any: ...


@runtime_checkable
class SupportsGradientCheckpointing(Protocol):
    def gradient_checkpointing_enable(self, **kwargs: Any) -> None: ...


class Tokenizer(Protocol):
    pad_token_id: Any


class Policy(Protocol):
    """The model being trained with its processor and tokenizer (mhpo_vl.models.policy.LoadedPolicy)."""

    model: torch.nn.Module
    processor: Any  # a transformers processor or tokenizer: untyped third-party objects
    tokenizer: Any


class Optimizer(Protocol):
    """torch's optimisers and DeepSpeed's wrappers alike: the parameter groups the LR schedule sets."""

    param_groups: list[dict[str, Any]]


class Runtime(Protocol):
    """Process group, device and the model's engine: the only part that knows about ranks
    (mhpo_vl.distributed.Runtime)."""

    rank: int
    world_size: int
    is_main: bool
    device: torch.device
    uses_deepspeed: bool
    model: torch.nn.Module  # as prepare() returned it (DeepSpeed: its engine)

    @property
    def zero_stage(self) -> int: ...

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]: ...

    def unwrapped(self) -> torch.nn.Module: ...

    def forward(self, fn: Callable[[torch.nn.Module], T]) -> T: ...

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None: ...

    def step(self) -> tuple[float, bool]: ...

    def set_lr(self, lr: float) -> None: ...

    def discard_gradients(self) -> None: ...

    def all_reduce_sum(self, values: Iterable[float]) -> list[float]: ...

    def all_agree(self, flag: bool) -> bool: ...

    def max_over_ranks(self, value: int) -> int: ...

    def all_gather_objects(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...

    def iter_full_weights(self, only: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]: ...

    def optimizer_state(self) -> Any: ...

    def load_optimizer_state(self, state: Any) -> None: ...

    def save_deepspeed_state(self, folder: str | os.PathLike[str]) -> None: ...

    def load_deepspeed_state(self, folder: str | os.PathLike[str]) -> None: ...


@dataclass
class TrainerParts:
    """What a Trainer is made of; `build_trainer` makes each from the config unless it is given one."""

    rt: Runtime
    run_dir: RunDirectory  # opened (locked) by build_trainer
    resume_from: Path | None
    policy: Policy
    model: torch.nn.Module  # the policy's model and its optimiser as rt.prepare returned them (DeepSpeed: an engine)
    optimizer: Optimizer
    ref_model: torch.nn.Module | None  # None without a KL term
    encoder: Encoder
    train_samples: list[Sample]
    val_samples: list[Sample]
    loss_fn: LossFn
    reward_fn: RewardFn
    sampler: Sampler
    writer: MetricsWriter
