"""The parts a Trainer is built from, each made from the run's config: the runtime, the policy and its optimiser, the
reference model, the prompt encoder, the datasets, the loss, the reward and the sampler. `build_trainer` makes every
part it is not given (tests give fakes: mhpo_vl.train.interfaces says what each part must have)."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from mhpo_vl.config import RunConfig, config_to_dict
from mhpo_vl.distributed import Runtime as DistributedRuntime
from mhpo_vl.distributed import launcher_world_size
from mhpo_vl.grading.reward import RewardFunction
from mhpo_vl.grading.user_reward import UserRewardFunction
from mhpo_vl.losses import PolicyLoss, build_loss
from mhpo_vl.models.policy import LoadedPolicy
from mhpo_vl.runs import console
from mhpo_vl.runs.checkpoints import CheckpointManager
from mhpo_vl.runs.fingerprint import fingerprint
from mhpo_vl.runs.loggers import metrics_writer
from mhpo_vl.runs.run_dir import RunDirectory
from mhpo_vl.train.interfaces import (
    Encoder,
    LossFn,
    Optimizer,
    Policy,
    PromptMeasurer,
    RewardFn,
    Runtime,
    Sampler,
    SupportsGradientCheckpointing,
    TrainerParts,
)
from mhpo_vl.train.loop import Trainer
from mhpo_vl.train.update import local_minibatch_rows
from mhpo_vl.types import Sample


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_model_path(cfg: RunConfig, cache_root: Path) -> str:
    """`tiny:vl` / `tiny:text` -> a tiny random model built offline (cached by builder version and sizes);
    anything else (a hub name or a local folder) as given."""
    name = cfg.model.name_or_path
    if not name.startswith("tiny:"):
        return name
    from mhpo_vl.models.tiny import cached_tiny_model

    return str(cached_tiny_model(name.split(":", 1)[1], cache_root, **cfg.model.tiny_overrides))


def build_trainer(cfg: RunConfig, *, cache_dir: str | Path = ".cache", runtime: Runtime | None = None,
                  policy: Policy | None = None, encoder: Encoder | None = None,
                  datasets: tuple[list[Sample], list[Sample]] | None = None, loss_fn: LossFn | None = None,
                  reward_fn: RewardFn | None = None, sampler: Sampler | None = None) -> Trainer:
    """A Trainer with each part made from `cfg`, except the parts given. The run directory is opened first
    (locked, checked against the run's config, config.yaml written; the checkpoint to resume from found); a
    failure after that lets go of it, so another start in this process may take it."""
    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    Path(t.output_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(t.seed)
    rt = runtime or make_runtime(cfg)
    model_path = resolve_model_path(cfg, Path(cache_dir) / "tiny_models")
    run_dir = RunDirectory(cfg, CheckpointManager(Path(t.output_dir), keep_last=t.keep_last))
    resume_from = run_dir.open(is_main=rt.is_main, share=rt.all_gather_objects)
    try:
        # LoRA: a checkpoint holds the adapter only; the base weights always come from the run's model
        adapter_from = resume_from if cfg.model.lora is not None else None
        load_from = str(resume_from) if resume_from and adapter_from is None else model_path
        policy = policy or load_policy_for(cfg, rt, load_from, adapter_from=adapter_from)
        model, optimizer = prepare_policy(cfg, rt, policy)
        encoder = encoder or make_encoder(cfg, policy)
        train, val = datasets or load_datasets(cfg, encoder)  # every prompt checked
        # The run is bound to its data: a resume on changed rows is refused (or recorded, allow_config_change).
        run_dir.bind_data({"data.train": fingerprint(train), "data.val": fingerprint(val)}, resume_from,
                          is_main=rt.is_main, share=rt.all_gather_objects)
        parts = TrainerParts(rt, run_dir, resume_from, policy, model, optimizer, load_reference(cfg, rt, model_path),
                             encoder, train, val, loss_fn or make_loss(cfg), reward_fn or make_reward(cfg),
                             sampler or sampler_from_config(cfg, rt, policy, load_from),
                             metrics_writer(t, enabled=rt.is_main, run_config=config_to_dict(cfg)))
        trainer = Trainer(cfg, parts)
        if adapter_from is not None:  # the engine started from the base weights: give it the adapted ones
            trainer.sync_weights()
        return trainer
    except BaseException:
        run_dir.release()
        raise


def make_runtime(cfg: RunConfig) -> DistributedRuntime:
    t = cfg.trainer
    # Micro-batches per optimiser update must be fixed for DeepSpeed's accumulation counter.
    micro_steps = math.ceil(local_minibatch_rows(cfg, launcher_world_size()) / t.micro_batch_size)
    return DistributedRuntime(device=t.device, deepspeed_config=t.deepspeed, micro_steps_per_update=micro_steps,
                              micro_batch_size=t.micro_batch_size, max_grad_norm=cfg.optim.max_grad_norm,
                              collective_timeout_s=t.collective_timeout_s)


def load_policy_for(cfg: RunConfig, rt: Runtime, load_from: str, adapter_from: str | Path | None = None
                    ) -> LoadedPolicy:
    """The policy from `load_from`; with model.lora, LoRA layers added (only they train) and, from a LoRA
    checkpoint (`adapter_from`), its adapter loaded (mhpo_vl.models.lora)."""
    from mhpo_vl.models.policy import load_policy

    console.line(f"loading the policy from {load_from} ({cfg.model.dtype}, {rt.device}, "
                 f"{rt.world_size} process{'es' if rt.world_size > 1 else ''})")
    policy = load_policy(load_from, dtype=getattr(torch, cfg.model.dtype), freeze_vision=cfg.model.freeze_vision_tower,
                         attn_implementation=cfg.model.attn_implementation)
    if not policy.is_vision and cfg.data.use_images:
        raise ValueError(f"model {load_from} is text-only but data.use_images is true; set data.use_images=false")
    lora = cfg.model.lora
    if lora is not None:
        from mhpo_vl.models.lora import add_lora

        wrapped = add_lora(policy.model, lora, adapter_from=adapter_from, base_model_name_or_path=load_from)
        trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
        console.line(f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {len(wrapped)} linear layers: {trainable:,} "
                     "trainable parameters" + (f" (adapter from {adapter_from})" if adapter_from else ""))
    return policy


def prepare_policy(cfg: RunConfig, rt: Runtime, policy: Policy) -> tuple[torch.nn.Module, Optimizer]:
    """The policy's model and an AdamW over its trainable parameters, prepared by the runtime (DeepSpeed: an engine).
    Plain torch with a bf16/fp16 model: the AdamW steps fp32 master copies that are rounded back into the model
    after each step (mhpo_vl.train.master_weights; DeepSpeed keeps its own). A float32 model: AdamW on its
    parameters, as before."""
    model = policy.model
    if cfg.model.gradient_checkpointing and rt.device.type == "cuda":
        if not isinstance(model, SupportsGradientCheckpointing):
            raise TypeError(f"model.gradient_checkpointing is on but {type(model).__name__} cannot do it; set "
                            "model.gradient_checkpointing=false")
        model.gradient_checkpointing_enable()
    trainable = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim

    def adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(o.betas[0], o.betas[1]),
                                 eps=o.eps)

    from mhpo_vl.train.master_weights import MasterWeightsOptimizer, needs_master_weights

    if not rt.uses_deepspeed and needs_master_weights(trainable):
        model = model.to(rt.device)  # the masters are made on the device the parameters train on
        masters = MasterWeightsOptimizer(trainable, adamw)
        # duck-typed as a torch optimiser: step, zero_grad, param_groups, state_dict, load_state_dict
        return rt.prepare(model, cast(torch.optim.Optimizer, masters))
    return rt.prepare(model, adamw(trainable))


def load_reference(cfg: RunConfig, rt: Runtime, model_path: str) -> torch.nn.Module | None:
    """The frozen starting model of the KL-to-reference term; None without one."""
    if cfg.algorithm.kl_coef <= 0:
        return None
    from mhpo_vl.models.policy import load_policy

    ref_model = load_policy(model_path, dtype=getattr(torch, cfg.model.dtype), freeze_vision=True).model.to(rt.device)
    return ref_model.requires_grad_(False).eval()


def make_encoder(cfg: RunConfig, policy: Policy) -> Encoder:
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.prompts import get_template, load_template

    d = cfg.data
    template = load_template(d.template) if Path(d.template).is_file() else get_template(d.template)
    return PromptEncoder(policy.processor, template, max_prompt_length=d.max_prompt_length, use_images=d.use_images,
                         min_pixels=d.min_pixels, max_pixels=d.max_pixels, system_prompt=d.system_prompt)


def load_datasets(cfg: RunConfig, encoder: Encoder) -> tuple[list[Sample], list[Sample]]:
    """The run's training and held-out samples, every prompt measured against data.max_prompt_length."""
    if not isinstance(encoder, PromptMeasurer):
        raise TypeError(f"the encoder given ({type(encoder).__name__}) cannot measure prompts (prompt_length, "
                        "max_prompt_length): give build_trainer the datasets too, or an encoder that can")
    from mhpo_vl.train.run_data import load_run_datasets

    train, val = load_run_datasets(cfg.data, encoder)
    console.line(f"data: {len(train)} training problems ({cfg.data.train.name}), "
                 f"{len(val)} held-out ({cfg.data.val.name})")
    return train, val


def make_loss(cfg: RunConfig) -> PolicyLoss:
    loss_kwargs = cfg.algorithm.loss_kwargs()
    if loss_kwargs.get("aggregation") == "seq-mean-token-sum-norm" and "norm_length" not in loss_kwargs:
        # Dr. GRPO divides by the generation budget, the same constant for every micro-batch.
        loss_kwargs["norm_length"] = cfg.rollout.max_tokens
    return build_loss(cfg.algorithm.loss, **loss_kwargs)


def make_reward(cfg: RunConfig) -> RewardFunction | UserRewardFunction:
    """The built-in reward (accuracy and format weights, graded in a process pool), or the user's function named by
    `reward.function`, run in such a pool with the same timeout (mhpo_vl.grading.user_reward)."""
    from mhpo_vl.grading import Grader

    r = cfg.reward
    if r.function is not None:
        return UserRewardFunction(r.function, num_workers=r.num_workers, timeout_s=r.timeout_s,
                                  require_think=r.require_think, max_consecutive_failures=r.max_consecutive_failures,
                                  truncated_reward=r.truncated_reward)
    grader = Grader(num_workers=r.num_workers, timeout_s=r.timeout_s, require_think=r.require_think)
    return RewardFunction(grader, accuracy_weight=r.accuracy_weight, format_weight=r.format_weight,
                          truncated_reward=r.truncated_reward)


def sampler_from_config(cfg: RunConfig, rt: Runtime, policy: Policy, model_path: str) -> Sampler:
    """The run's sampler with the run's settings: HF generate on the trainer's own model (the one sampler factory,
    mhpo_vl.rollout.factory.make_sampler), or a colocated vLLM engine on this rank's own device (engine seed
    trainer.seed + 1000 * rank; sleep mode on CUDA only, at rollout.sleep_level, keeping a frozen vision tower)."""
    from mhpo_vl.rollout.factory import make_sampler as build

    r = cfg.rollout
    if r.backend == "hf":
        return build("hf", model_path, dtype=cfg.model.dtype, hf_model=rt.unwrapped(), hf_processor=policy.processor)
    from mhpo_vl.rollout.vllm_sampler import VISION_TOWER_GLOBS, VLLMSampler

    max_len = r.max_model_len or (cfg.data.max_prompt_length + r.max_tokens)
    console.line(f"starting the vLLM engine (max_model_len {max_len})")
    started = time.perf_counter()
    frozen_tower = cfg.model.freeze_vision_tower and bool(getattr(policy, "is_vision", False))
    sampler = VLLMSampler(model_path, dtype=cfg.model.dtype, seed=cfg.trainer.seed + 1000 * rt.rank,
                          max_model_len=max_len, gpu_memory_utilization=r.gpu_memory_utilization,
                          enable_sleep_mode=r.enable_sleep_mode and rt.device.type == "cuda", sleep_level=r.sleep_level,
                          sleep_preserve=VISION_TOWER_GLOBS if frozen_tower else ())
    console.line(f"vLLM engine ready in {time.perf_counter() - started:.0f} s")
    return sampler
