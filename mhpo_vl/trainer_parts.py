"""The parts a Trainer is built from, each made from the run's config (mhpo_vl.trainer.build_trainer calls these
for every part it is not given): the runtime, the policy and its optimiser, the reference model, the prompt encoder,
the datasets, the loss, the reward and the sampler."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import console
from mhpo_vl.config import RunConfig
from mhpo_vl.types import Sample


def local_minibatch_rows(cfg: RunConfig, world: int) -> int:
    """Rows of one optimiser update on this rank (its share of trainer.minibatch_size prompts x rollout.n)."""
    t = cfg.trainer
    if t.rollout_batch_size % world or t.minibatch_size % world:
        raise ValueError(f"trainer.rollout_batch_size ({t.rollout_batch_size}) and trainer.minibatch_size "
                         f"({t.minibatch_size}) must be multiples of the number of processes ({world})")
    return (t.minibatch_size // world) * cfg.rollout.n


def make_runtime(cfg: RunConfig):
    from mhpo_vl.distributed import Runtime

    t = cfg.trainer
    # Micro-batches per optimiser update must be fixed for DeepSpeed's accumulation counter.
    micro_steps = math.ceil(local_minibatch_rows(cfg, _world_size_from_env()) / t.micro_batch_size)
    return Runtime(device=t.device, deepspeed_config=t.deepspeed, micro_steps_per_update=micro_steps,
                   micro_batch_size=t.micro_batch_size, max_grad_norm=cfg.optim.max_grad_norm)


def load_policy_for(cfg: RunConfig, rt, load_from: str):
    from mhpo_vl.model import load_policy

    console.line(f"loading the policy from {load_from} ({cfg.model.dtype}, {rt.device}, "
                 f"{rt.world_size} process{'es' if rt.world_size > 1 else ''})")
    policy = load_policy(load_from, dtype=getattr(torch, cfg.model.dtype), freeze_vision=cfg.model.freeze_vision_tower,
                         attn_implementation=cfg.model.attn_implementation)
    if not policy.is_vision and cfg.data.use_images:
        raise ValueError(f"model {load_from} is text-only but data.use_images is true; set data.use_images=false")
    return policy


def prepare_policy(cfg: RunConfig, rt, policy) -> tuple[Any, Any]:
    """The policy's model and an AdamW over its trainable parameters, prepared by the runtime (DeepSpeed: an engine)."""
    model = policy.model
    if cfg.model.gradient_checkpointing and rt.device.type == "cuda":
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)
    return rt.prepare(model, optimizer)


def load_reference(cfg: RunConfig, rt, model_path: str):
    """The frozen starting model of the KL-to-reference term; None without one."""
    if cfg.algorithm.kl_coef <= 0:
        return None
    from mhpo_vl.model import load_policy

    ref_model = load_policy(model_path, dtype=getattr(torch, cfg.model.dtype), freeze_vision=True).model.to(rt.device)
    return ref_model.requires_grad_(False).eval()


def make_encoder(cfg: RunConfig, policy):
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.prompts import get_template, load_template

    d = cfg.data
    template = load_template(d.template) if Path(d.template).is_file() else get_template(d.template)
    return PromptEncoder(policy.processor, template, max_prompt_length=d.max_prompt_length, use_images=d.use_images,
                         min_pixels=d.min_pixels, max_pixels=d.max_pixels, system_prompt=d.system_prompt)


def load_datasets(cfg: RunConfig, encoder) -> tuple[list[Sample], list[Sample]]:
    from mhpo_vl.run_data import load_run_datasets

    train, val = load_run_datasets(cfg.data, encoder)
    console.line(f"data: {len(train)} training problems ({cfg.data.train.name}), "
                 f"{len(val)} held-out ({cfg.data.val.name})")
    return train, val


def make_loss(cfg: RunConfig):
    from mhpo_vl.losses import build_loss

    loss_kwargs = cfg.algorithm.loss_kwargs()
    if loss_kwargs.get("aggregation") == "seq-mean-token-sum-norm" and "norm_length" not in loss_kwargs:
        # Dr. GRPO divides by the generation budget, the same constant for every micro-batch.
        loss_kwargs["norm_length"] = cfg.rollout.max_tokens
    return build_loss(cfg.algorithm.loss, **loss_kwargs)


def make_reward(cfg: RunConfig):
    from mhpo_vl.grading import Grader
    from mhpo_vl.grading.reward import RewardFunction

    r = cfg.reward
    grader = Grader(num_workers=r.num_workers, timeout_s=r.timeout_s, require_think=r.require_think)
    return RewardFunction(grader, accuracy_weight=r.accuracy_weight, format_weight=r.format_weight,
                          truncated_reward=r.truncated_reward)


def make_sampler(cfg: RunConfig, rt, policy, model_path: str):
    """The run's sampler from the one sampler factory (mhpo_vl.rollout.factory): HF generate on the trainer's own
    model, or a colocated vLLM engine (engine seed trainer.seed + 1000 * rank; sleep mode on CUDA only)."""
    from mhpo_vl.rollout.factory import make_sampler as build

    r = cfg.rollout
    if r.backend == "hf":
        return build("hf", model_path, dtype=cfg.model.dtype, hf_model=rt.unwrapped(), hf_processor=policy.processor)
    max_len = r.max_model_len or (cfg.data.max_prompt_length + r.max_tokens)
    console.line(f"starting the vLLM engine (max_model_len {max_len})")
    started = time.perf_counter()
    sampler = build("vllm", model_path, dtype=cfg.model.dtype, seed=cfg.trainer.seed + 1000 * rt.rank,
                    max_model_len=max_len, gpu_memory_utilization=r.gpu_memory_utilization,
                    enable_sleep_mode=r.enable_sleep_mode and rt.device.type == "cuda")
    console.line(f"vLLM engine ready in {time.perf_counter() - started:.0f} s")
    return sampler


def _world_size_from_env() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))
