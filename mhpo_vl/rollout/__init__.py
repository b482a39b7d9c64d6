"""Rollout: sample K completions per prompt with per-token sampler logprobs.

``VLLMSampler`` (vLLM engine, in-process weight sync) and ``HFSampler`` (transformers ``generate`` on the policy
itself) share one interface: ``generate(prompts, config) -> list[list[Completion]]``, ``load_weights(named_tensors)``,
``sleep()``, ``wake_up()``. ``factory.make_sampler`` is the one place either is built. vLLM is imported only when a
``VLLMSampler`` is built.
"""
from __future__ import annotations

from mhpo_vl.rollout.hf_sampler import HFSampler
from mhpo_vl.rollout.sampling import SamplingConfig

__all__ = ["HFSampler", "SamplingConfig", "VLLMSampler"]


def __getattr__(name: str):
    if name == "VLLMSampler":  # lazy: importing vllm takes seconds
        from mhpo_vl.rollout.vllm_sampler import VLLMSampler

        return VLLMSampler
    raise AttributeError(f"module 'mhpo_vl.rollout' has no attribute {name!r}")
