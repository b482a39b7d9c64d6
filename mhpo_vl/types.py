"""Shared records that travel between the phases of a training step, and the dimension glossary.

Dimension names used in tensor variable suffixes across the package (tinker-cookbook style):
  B  prompts in a batch
  K  samples (rollouts) per prompt, the GRPO group size
  N  rows = B * K, one per sampled response
  T  response tokens (padded to the longest response in the batch)
  L  full sequence length, prompt + response (padded)
  V  vocabulary size
Logprobs are named by who produced them: ``policy_`` (the model being trained, with grad), ``old_`` (the policy
that produced the rollout, no grad), ``sampler_`` (what the inference engine reported), ``ref_`` (frozen reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# An image travels as a path on disk (str) or an in-memory PIL image (datasets that draw or decode images).
ImageRef = str | Any

ANSWER_TYPES = ("multiple_choice", "integer", "float", "text", "expression", "list")


@dataclass
class Sample:
    """One problem, in the canonical form every dataset adapter produces.

    ``answer`` is the gold answer as text. For multiple-choice rows it is the CHOICE TEXT (as Geometry3K and
    MathVista store it); the letter is ``metadata["answer_letter"]`` when the source has one.
    """

    id: str
    source: str
    split: str
    question: str
    images: list[ImageRef] = field(default_factory=list)
    answer: str = ""
    answer_type: str = "text"
    choices: list[str] | None = None
    precision: int | None = None
    unit: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"sample {self.source}/{self.id}: unknown answer_type {self.answer_type!r}; valid: {', '.join(ANSWER_TYPES)}"
            )


@dataclass
class Completion:
    """One sampled response to one prompt."""

    text: str
    token_ids: list[int]
    sampler_logprobs: list[float] | None  # per generated token, None when the sampler was not asked for them
    finish_reason: str  # "stop" | "length"


@dataclass
class EncodedPrompt:
    """A sample rendered for the model: what the sampler is given and what the trainer's forward sees.

    ``prompt_text`` is the chat-templated text with ONE ``<|image_pad|>`` per image (inside
    ``<|vision_start|>...<|vision_end|>``): the form vLLM takes together with ``images``.
    ``prompt_token_ids`` are the processor's ids for the same prompt with image pads EXPANDED to the number of
    visual tokens: the form the trainer's forward pass takes. ``images`` are already decoded and resized to the
    processor's min/max pixels, so vLLM and the processor see identical pixels.
    ``model_inputs`` holds the processor's other outputs for this prompt (pixel_values, image_grid_thw, ...) as an
    opaque dict; it is empty for text-only prompts.
    """

    sample: Sample
    prompt_text: str
    prompt_token_ids: list[int]
    images: list[Any] = field(default_factory=list)
    model_inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SequenceBatch:
    """N prompt+response rows ready for a forward pass.

    Layout: prompts LEFT-padded to a common length P, responses RIGHT-padded to T, so the response tokens of every
    row are the last T positions: the logits at positions [P-1, P+T-1) predict ``response_ids_NT``.
    ``model_inputs`` are the processor outputs of all rows concatenated in row order (opaque: pixel_values,
    image_grid_thw, ...); nothing downstream needs to know their names.
    """

    input_ids_NL: Any  # LongTensor [N, P+T]
    attention_mask_NL: Any  # LongTensor [N, P+T]
    response_ids_NT: Any  # LongTensor [N, T]
    response_mask_NT: Any  # FloatTensor [N, T], 1 for real response tokens
    model_inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids_NL.shape[0])

    def to(self, device: Any) -> SequenceBatch:
        move = lambda v: v.to(device) if hasattr(v, "to") else v  # noqa: E731
        return SequenceBatch(
            move(self.input_ids_NL),
            move(self.attention_mask_NL),
            move(self.response_ids_NT),
            move(self.response_mask_NT),
            {k: move(v) for k, v in self.model_inputs.items()},
        )
