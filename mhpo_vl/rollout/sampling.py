"""Sampling settings shared by the vLLM and HF-generate samplers."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingConfig:
    """How to sample: K = ``n`` completions per prompt.

    ``seed`` makes a call reproducible: prompt i's completion k is drawn with seed ``seed + i * n + k`` (vLLM
    gives a request's k-th child ``seed + k``), so equal seeds give equal completions for the same engine.
    With top_p < 1 the samplers report logprobs renormalised over the nucleus, and the trainer's logprobs apply
    the same nucleus (``per_token_logprobs(..., top_p=)``), so the two agree at any top_p.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: list[str] | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0 (RL sampling is stochastic), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}")

    def request_seed(self, prompt_index: int) -> int | None:
        """Seed of prompt ``prompt_index``'s first completion (None when unseeded)."""
        return None if self.seed is None else self.seed + prompt_index * self.n
