"""The one place samplers are built, for `mhpo-vl eval` / `eval-run` and for the trainer."""
from __future__ import annotations

from typing import Any

from mhpo_vl.config.schema import DTYPES
from mhpo_vl.config.schema import SAMPLER_BACKENDS as BACKENDS


def make_sampler(backend: str, model_path: str, *, dtype: str = "bfloat16", seed: int = 0, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.9, enable_sleep_mode: bool = False, hf_model: Any = None,
                 hf_processor: Any = None):
    """A sampler with the rollout interface (``generate``, ``load_weights``, ``sleep``, ``wake_up``, ``close``).

    ``vllm``: an in-process engine on ``model_path`` (engine seed ``seed``; sleep mode only has an effect on CUDA).
    ``hf``: transformers ``generate`` on ``hf_model`` with ``hf_processor`` when given (the trainer's own policy:
    sampling then shares its weights and needs no weight sync), else on ``model_path`` loaded in ``dtype`` (vision
    tower included, eval mode); its processor is ``sampler.processor``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be bfloat16, float16 or float32; got {dtype!r}")
    if backend == "hf":
        from mhpo_vl.rollout.hf_sampler import HFSampler

        if hf_model is None:
            import torch

            from mhpo_vl.models.policy import load_policy

            policy = load_policy(model_path, dtype=getattr(torch, dtype), freeze_vision=False)
            policy.model.eval()
            hf_model, hf_processor = policy.model, policy.processor
        return HFSampler(hf_model, hf_processor)
    from mhpo_vl.rollout.vllm_sampler import VLLMSampler

    return VLLMSampler(model_path, max_model_len=max_model_len, dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode)
