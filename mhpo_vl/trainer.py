"""The RL loop. One training step reads as the algorithm, each phase named and timed:

    prompts -> rollouts -> rewards -> advantages -> old logprobs -> policy update (ppo_epochs x minibatches)
    -> weight sync into the sampler -> metrics

Rollouts come from a colocated sampler (vLLM by default), rewards from the same grader evaluation uses, the update
from `mhpo_vl.losses` on the language model only (vision tower frozen). One process or many (accelerate + DeepSpeed).
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhpo_vl import console
from mhpo_vl.atomic_io import write_durably
from mhpo_vl.checkpoint import CheckpointManager, rng_state, set_rng_state
from mhpo_vl.config import RunConfig
from mhpo_vl.data_order import PromptOrder
from mhpo_vl.lr_schedule import lr_at, total_updates, updates_per_step
from mhpo_vl.run_dir import RunDirectory, apply_optimizer_settings, release_run_dir_on_error
from mhpo_vl.run_logging import MetricsWriter
from mhpo_vl.types import Completion, EncodedPrompt, Sample


class TrainingDivergedError(RuntimeError):
    pass


@dataclass
class Rollouts:
    """The N = B*K rows of one step, in group order (the K samples of prompt b are rows b*K .. b*K+K-1)."""

    prompts: list[EncodedPrompt]  # [N] (each prompt repeated K times)
    completions: list[Completion]  # [N]
    group_size: int
    rewards_N: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    accuracy_N: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    format_N: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    advantages_N: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    old_logprobs: list[torch.Tensor] = field(default_factory=list)  # [N] of [T_i]
    ref_logprobs: list[torch.Tensor] | None = None
    entropy_mean: float = float("nan")
    logprob_diff_mean: float = float("nan")  # |sampler - trainer| logprob per token (see _compare_sampler_logprobs)
    logprob_diff_max: float = float("nan")

    def __len__(self) -> int:
        return len(self.completions)


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


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
    from mhpo_vl.tiny_model import cached_tiny_model

    return str(cached_tiny_model(name.split(":", 1)[1], cache_root, **cfg.model.tiny_overrides))


class Trainer:
    @release_run_dir_on_error  # a failed start leaves the directory free for the next try in this process
    def __init__(self, cfg: RunConfig, *, cache_dir: str | Path = ".cache"):
        from mhpo_vl.collate import PromptEncoder
        from mhpo_vl.distributed import Runtime
        from mhpo_vl.grading import Grader
        from mhpo_vl.grading.reward import RewardFunction
        from mhpo_vl.losses import build_loss
        from mhpo_vl.model import load_policy

        self.cfg = cfg
        t = cfg.trainer
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.out = Path(t.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(t.seed)

        # Micro-batches per optimiser update must be fixed for DeepSpeed's accumulation counter.
        self.group_size = cfg.rollout.n
        world = _world_size_from_env()
        if t.rollout_batch_size % world or t.minibatch_size % world:
            raise ValueError(f"trainer.rollout_batch_size ({t.rollout_batch_size}) and trainer.minibatch_size "
                             f"({t.minibatch_size}) must be multiples of the number of processes ({world})")
        self.local_minibatch_rows = (t.minibatch_size // world) * self.group_size
        micro_steps = math.ceil(self.local_minibatch_rows / t.micro_batch_size)
        self.rt = Runtime(device=t.device, deepspeed_config=t.deepspeed, micro_steps_per_update=micro_steps,
                          micro_batch_size=t.micro_batch_size,
                          max_grad_norm=cfg.optim.max_grad_norm)

        self.model_path = resolve_model_path(cfg, Path(cache_dir) / "tiny_models")
        self.ckpt = CheckpointManager(self.out, keep_last=t.keep_last)
        # Locked, checked against the run's config, never mixed; resume from the newest intact checkpoint.
        self.run_dir = RunDirectory(cfg, self.ckpt)
        resume_from = self.run_dir.open(is_main=self.rt.is_main, share=self.rt.all_gather_objects)
        load_from = str(resume_from) if resume_from else self.model_path
        console.line(f"loading the policy from {load_from} ({cfg.model.dtype}, {self.rt.device}, "
                     f"{self.rt.world_size} process{'es' if self.rt.world_size > 1 else ''})")
        dtype = getattr(torch, cfg.model.dtype)
        self.policy = load_policy(load_from, dtype=dtype, freeze_vision=cfg.model.freeze_vision_tower,
                                  attn_implementation=cfg.model.attn_implementation)
        if not self.policy.is_vision and cfg.data.use_images:
            raise ValueError(f"model {load_from} is text-only but data.use_images is true; set data.use_images=false")
        model = self.policy.model
        if cfg.model.gradient_checkpointing and self.rt.device.type == "cuda":
            model.gradient_checkpointing_enable()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                      betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
        self.model, self.optimizer = self.rt.prepare(model, optimizer)
        self.ref_model = None
        if cfg.algorithm.kl_coef > 0:
            self.ref_model = load_policy(self.model_path, dtype=dtype, freeze_vision=True).model.to(self.rt.device)
            self.ref_model.requires_grad_(False).eval()

        template = _template(cfg.data.template)
        self.encoder = PromptEncoder(self.policy.processor, template, max_prompt_length=cfg.data.max_prompt_length,
                                     use_images=cfg.data.use_images, min_pixels=cfg.data.min_pixels,
                                     max_pixels=cfg.data.max_pixels, system_prompt=cfg.data.system_prompt)
        from mhpo_vl.run_data import load_run_datasets

        self.train_samples, self.val_samples = load_run_datasets(cfg.data, self.encoder)  # every prompt checked
        console.line(f"data: {len(self.train_samples)} training problems ({cfg.data.train.name}), "
                     f"{len(self.val_samples)} held-out ({cfg.data.val.name})")
        self.order = PromptOrder(len(self.train_samples), t.rollout_batch_size, seed=cfg.data.seed,
                                 shuffle=cfg.data.shuffle)
        loss_kwargs = cfg.algorithm.loss_kwargs()
        if loss_kwargs.get("aggregation") == "seq-mean-token-sum-norm" and "norm_length" not in loss_kwargs:
            # Dr. GRPO divides by the generation budget, the same constant for every micro-batch.
            loss_kwargs["norm_length"] = cfg.rollout.max_tokens
        self.loss_fn = build_loss(cfg.algorithm.loss, **loss_kwargs)
        self.grader = Grader(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                             require_think=cfg.reward.require_think)
        self.reward_fn = RewardFunction(self.grader, accuracy_weight=cfg.reward.accuracy_weight,
                                        format_weight=cfg.reward.format_weight,
                                        truncated_reward=cfg.reward.truncated_reward)
        self.sampler = self._make_sampler(load_from)
        self.writer = MetricsWriter(self.out, enabled=self.rt.is_main)

        self.step_idx = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.val_history: list[dict[str, Any]] = []
        self.summary_extra: dict[str, Any] = {}
        self.resumed_from = None
        self.wall_seconds_before = 0.0  # earlier segments of this run (up to the checkpoint resumed from)
        self._fit_started: float | None = None
        if resume_from:
            self._restore(resume_from)
            console.line(f"resuming from {resume_from} (step {self.step_idx} of {t.total_steps})")

    # ------------------------------------------------------------------------------------------------ set-up --
    def _make_sampler(self, model_path: str):
        r = self.cfg.rollout
        if r.backend == "hf":
            from mhpo_vl.rollout.hf_sampler import HFSampler

            return HFSampler(self.rt.unwrapped(), self.policy.processor)
        from mhpo_vl.rollout.vllm_sampler import VLLMSampler

        max_len = r.max_model_len or (self.cfg.data.max_prompt_length + r.max_tokens)
        console.line(f"starting the vLLM engine (max_model_len {max_len})")
        started = time.perf_counter()
        sampler = VLLMSampler(model_path, max_model_len=max_len, dtype=self.cfg.model.dtype,
                              seed=self.cfg.trainer.seed + 1000 * self.rt.rank,
                              gpu_memory_utilization=r.gpu_memory_utilization,
                              enable_sleep_mode=r.enable_sleep_mode and self.rt.device.type == "cuda")
        console.line(f"vLLM engine ready in {time.perf_counter() - started:.0f} s")
        return sampler

    # ------------------------------------------------------------------------------------------- the step ----
    def train_sampling(self):
        from mhpo_vl.rollout.sampling import SamplingConfig

        r = self.cfg.rollout
        # A seed per (step, rank) makes a resumed run draw the same samples as the uninterrupted one.
        return SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                              seed=self.cfg.trainer.seed * 100_003 + self.step_idx * 97 + self.rt.rank)

    def step(self) -> dict[str, Any]:
        timer = PhaseTimer()
        start = time.perf_counter()
        with timer("prompts"):
            samples = self.next_prompts()
            prompts = self.encoder.encode(samples)
        with timer("rollout"):
            self.sampler.wake_up()
            rollouts = self.generate(prompts)
        with timer("reward"):
            self.score(rollouts)
        with timer("advantages"):
            adv_metrics = self.compute_advantages(rollouts)
            if self.cfg.algorithm.dynamic_sampling:
                rollouts, refill_metrics = self.refill_dynamic(rollouts)
                adv_metrics.update(refill_metrics)
        with timer("old_logprobs"):
            self.sampler.sleep()
            self.compute_old_logprobs(rollouts)
        with timer("update"):
            update_metrics = self.update(rollouts)
        with timer("weight_sync"):
            self.sampler.wake_up()  # weights go into an awake engine (sleep mode offloads them on GPU)
            self.sync_weights()
        self.step_idx += 1
        return self.step_metrics(rollouts, adv_metrics, update_metrics, timer, time.perf_counter() - start)

    def next_prompts(self) -> list[Sample]:
        indices = self.order.next_batch()
        mine = indices[self.rt.rank :: self.rt.world_size]
        return [self.train_samples[i] for i in mine]

    def generate(self, prompts: list[EncodedPrompt]) -> Rollouts:
        groups = self.sampler.generate(prompts, self.train_sampling())
        rows_p, rows_c = [], []
        for prompt, group in zip(prompts, groups):
            if len(group) != self.group_size:
                raise RuntimeError(f"sampler returned {len(group)} completions for a prompt, expected {self.group_size}")
            rows_p.extend([prompt] * len(group))
            rows_c.extend(group)
        return Rollouts(rows_p, rows_c, self.group_size)

    def score(self, rollouts: Rollouts) -> None:
        out = self.reward_fn([p.sample for p in rollouts.prompts], [c.text for c in rollouts.completions],
                             truncated=[c.finish_reason == "length" for c in rollouts.completions])
        rollouts.rewards_N = torch.tensor(out.rewards, dtype=torch.float32)
        rollouts.accuracy_N = torch.tensor([float(v.correct) for v in out.verdicts])
        rollouts.format_N = torch.tensor([float(v.format_ok) for v in out.verdicts])

    def compute_advantages(self, rollouts: Rollouts) -> dict[str, float]:
        from mhpo_vl.advantages import count_zero_variance_groups, group_advantages

        a = self.cfg.algorithm
        rewards_BK = rollouts.rewards_N.view(-1, rollouts.group_size)
        rollouts.advantages_N = group_advantages(rewards_BK, std_normalize=a.adv_std_normalize, eps=a.adv_eps,
                                                 unbiased_std=a.adv_unbiased_std).reshape(-1)
        return {"groups/zero_variance": float(count_zero_variance_groups(rewards_BK)),
                "groups/count": float(rewards_BK.shape[0])}

    def refill_dynamic(self, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
        """DAPO dynamic sampling: keep only groups whose rewards differ; sample more prompts until the batch is
        full again (or `max_refill_rounds` is reached, then the batch is topped up with the kept groups repeated
        so the update size stays fixed — counted in the metrics)."""
        K = rollouts.group_size
        want = len(rollouts) // K
        kept = _informative_groups(rollouts)
        rounds = 0
        # Every rank runs the same number of rounds and draws its share of each round's prompts, full or not, so
        # the prompt order (one sequence for all ranks) stays in step.
        while rounds < self.cfg.algorithm.max_refill_rounds and not self.rt.all_agree(len(kept) >= want):
            rounds += 1
            extra_samples = self.next_prompts()
            if len(kept) >= want:
                continue
            extra = self.generate(self.encoder.encode(extra_samples))
            self.score(extra)
            self.compute_advantages(extra)
            kept.extend(_informative_groups(extra))
        padded = 0
        if not kept:
            kept = _all_groups(rollouts)  # nothing informative: advantages are 0, the update is a no-op
        while len(kept) < want:
            kept.append(kept[padded % len(kept)])
            padded += 1
        kept = kept[:want]
        merged = Rollouts([p for g in kept for p in g[0]], [c for g in kept for c in g[1]], K)
        merged.rewards_N = torch.cat([g[2] for g in kept])
        merged.accuracy_N = torch.cat([g[3] for g in kept])
        merged.format_N = torch.cat([g[4] for g in kept])
        merged.advantages_N = torch.cat([g[5] for g in kept])
        return merged, {"dynamic_sampling/refill_rounds": float(rounds), "dynamic_sampling/padded_groups": float(padded)}

    # -------------------------------------------------------------------------------------------- forward ---
    def _batch(self, rollouts: Rollouts, rows: list[int]):
        from mhpo_vl.collate import collate_sequences

        batch = collate_sequences([rollouts.prompts[i] for i in rows],
                                  [rollouts.completions[i].token_ids for i in rows],
                                  pad_token_id=self.policy.tokenizer.pad_token_id)
        return batch.to(self.rt.device)

    def _logprobs(self, model, batch, *, with_entropy: bool = False):
        """Logprobs of the distribution the sampler drew from: temperature applied and the vision tokens banned,
        as vLLM's processed logprobs are, so on-policy ratios are 1 up to float error."""
        from mhpo_vl.model import per_token_logprobs, vision_token_ids

        if not hasattr(self, "_banned_ids"):
            self._banned_ids = vision_token_ids(self.policy.tokenizer)
        return per_token_logprobs(model, batch, chunk_size=self.cfg.trainer.logprob_chunk_size,
                                  with_entropy=with_entropy, temperature=self.cfg.rollout.temperature,
                                  suppressed_token_ids=self._banned_ids)

    @torch.no_grad()
    def compute_old_logprobs(self, rollouts: Rollouts) -> None:
        """Old logprobs are recomputed by the trainer (default): the same numerics as the update, so on the first
        minibatch the ratio is exactly 1. With rollout.use_sampler_logprobs the sampler's values are used."""
        n = len(rollouts)
        mb = self.cfg.trainer.logprob_micro_batch_size
        model = self.rt.unwrapped()
        was_training = model.training
        model.eval()
        old: list[torch.Tensor] = []
        ref: list[torch.Tensor] = []
        ent_sum, ent_count = 0.0, 0.0
        for lo in range(0, n, mb):
            rows = list(range(lo, min(n, lo + mb)))
            batch = self._batch(rollouts, rows)
            lp_NT, ent_NT = self.rt.forward(lambda m: self._logprobs(m, batch, with_entropy=True))
            mask = batch.response_mask_NT
            ent_sum += float((ent_NT * mask).sum())
            ent_count += float(mask.sum())
            if self.ref_model is not None:
                ref_NT, _ = self._logprobs(self.ref_model, batch)
            for j, i in enumerate(rows):
                t_i = len(rollouts.completions[i].token_ids)
                old.append(lp_NT[j, :t_i].float().cpu())
                if self.ref_model is not None:
                    ref.append(ref_NT[j, :t_i].float().cpu())
        self._compare_sampler_logprobs(rollouts, old)
        if self.cfg.rollout.use_sampler_logprobs:
            old = []
            for c in rollouts.completions:
                if c.sampler_logprobs is None:
                    raise RuntimeError("rollout.use_sampler_logprobs is set but the sampler returned no logprobs")
                old.append(torch.tensor(c.sampler_logprobs, dtype=torch.float32))
        rollouts.old_logprobs = old
        rollouts.ref_logprobs = ref if self.ref_model is not None else None
        ent_sum, ent_count = self.rt.all_reduce_sum([ent_sum, ent_count])  # over every rank's tokens
        rollouts.entropy_mean = ent_sum / max(ent_count, 1.0)
        model.train(was_training)

    def _compare_sampler_logprobs(self, rollouts: Rollouts, trainer_logprobs: list[torch.Tensor]) -> None:
        """|sampler logprob - trainer logprob| over every sampled token, all ranks: the two compute the same
        distribution from the same weights, so this is float error (~1e-6 in float32) unless the weight sync or
        the numerics broke. NaN when the sampler reported no logprobs."""
        total, count, largest = 0.0, 0, 0.0
        for c, mine in zip(rollouts.completions, trainer_logprobs):
            if c.sampler_logprobs is None or not len(c.sampler_logprobs):
                continue
            diff = (torch.tensor(c.sampler_logprobs, dtype=torch.float32) - mine).abs()
            total, count, largest = total + float(diff.sum()), count + diff.numel(), max(largest, float(diff.max()))
        total, count = self.rt.all_reduce_sum([total, count])
        largest = max(self.rt.all_gather_objects(largest))
        rollouts.logprob_diff_mean = total / count if count else float("nan")
        rollouts.logprob_diff_max = largest if count else float("nan")

    # --------------------------------------------------------------------------------------------- update ---
    def update(self, rollouts: Rollouts) -> dict[str, float]:
        """ppo_epochs passes over shuffled minibatches; each minibatch is one optimiser step built from
        micro-batches whose losses are normalised by the minibatch's GLOBAL token/sequence counts."""
        t = self.cfg.trainer
        n = len(rollouts)
        gen = torch.Generator().manual_seed(self.cfg.trainer.seed * 7919 + self.step_idx)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        maxes: dict[str, float] = {}
        grad_norms: list[float] = []
        minibatch_losses: list[float] = []  # this rank's share; summed over ranks below
        skipped = 0
        lr = float("nan")
        self.model.train()
        for _epoch in range(t.ppo_epochs):
            perm = torch.randperm(n, generator=gen).tolist()
            for lo in range(0, n, self.local_minibatch_rows):
                # The schedule is a function of the update's index alone: a resumed run continues it exactly.
                lr = lr_at(self.step_idx * updates_per_step(t) + len(grad_norms), self.cfg.optim, total_updates(t))
                self.rt.set_lr(lr)
                rows = perm[lo : lo + self.local_minibatch_rows]
                micro = [rows[i : i + t.micro_batch_size] for i in range(0, len(rows), t.micro_batch_size)]
                lengths = [len(rollouts.completions[i].token_ids) for i in rows]
                # The loss module's global normalisers: valid tokens and NON-EMPTY rows of the whole minibatch.
                g_tokens, g_seqs = (max(1.0, g) for g in self.rt.all_reduce_sum([sum(lengths), sum(n > 0 for n in lengths)]))
                finite = True
                minibatch_loss = 0.0
                for k, mrows in enumerate(micro):
                    last = k == len(micro) - 1
                    out = self._micro_loss(rollouts, mrows, g_tokens, g_seqs)
                    minibatch_loss += float(out.loss.detach())
                    # Every rank must take the same path: a backward (DeepSpeed reduces gradients inside it) or
                    # an optimiser step on some ranks but not others would leave the others waiting forever.
                    finite = finite and self.rt.all_agree(bool(torch.isfinite(out.loss)))
                    if finite:
                        self.rt.backward(out.loss, last)
                    for name, value in out.metrics.items():
                        v = float(value)
                        if name.endswith("_max"):
                            maxes[name] = max(maxes.get(name, -math.inf), v)
                        elif name.endswith("_min"):
                            maxes[name] = min(maxes.get(name, math.inf), v)
                        else:
                            sums[name] = sums.get(name, 0.0) + v
                            counts[name] = counts.get(name, 0) + 1
                minibatch_losses.append(minibatch_loss)
                norm, applied = self.rt.step() if finite else self._skip_update()
                applied = applied and finite
                grad_norms.append(norm)
                if applied:
                    self.nonfinite_in_a_row = 0
                else:
                    skipped += 1
                    self.nonfinite_total += 1
                    self.nonfinite_in_a_row += 1
                    if self.nonfinite_in_a_row >= t.max_consecutive_nonfinite:
                        raise TrainingDivergedError(
                            f"{self.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient "
                            f"(limit trainer.max_consecutive_nonfinite={t.max_consecutive_nonfinite}); stopping at step "
                            f"{self.step_idx}. The latest checkpoint is {self.ckpt.latest()}.")
        metrics = {f"loss/{k}": v / counts[k] for k, v in sums.items()}
        # The loss of each whole minibatch (all micro-batches, all ranks), averaged over the step's updates.
        totals = self.rt.all_reduce_sum(minibatch_losses)
        metrics["loss/total"] = float(np.mean(totals)) if totals else float("nan")
        self.last_update_losses = totals
        metrics.update({f"loss/{k}": v for k, v in maxes.items()})
        finite_norms = [g for g in grad_norms if math.isfinite(g)]
        metrics["grad_norm"] = float(np.mean(finite_norms)) if finite_norms else float("nan")
        metrics["grad_norm_max"] = float(np.max(finite_norms)) if finite_norms else float("nan")
        metrics["updates/skipped_nonfinite"] = float(skipped)
        metrics["updates/applied"] = float(len(grad_norms) - skipped)
        metrics["optim/lr"] = lr  # the learning rate of the step's last update
        return metrics

    def _skip_update(self) -> tuple[float, bool]:
        """Drop the accumulated gradient of a minibatch that had a non-finite loss."""
        self.rt.discard_gradients()
        return float("nan"), False

    def _micro_loss(self, rollouts: Rollouts, rows: list[int], g_tokens: float, g_seqs: float):
        batch = self._batch(rollouts, rows)
        logprobs_NT, _ = self.rt.forward(lambda m: self._logprobs(m, batch))
        T = logprobs_NT.shape[1]
        old_NT = _pad_rows([rollouts.old_logprobs[i] for i in rows], T).to(logprobs_NT.device)
        ref_NT = None
        if rollouts.ref_logprobs is not None:
            ref_NT = _pad_rows([rollouts.ref_logprobs[i] for i in rows], T).to(logprobs_NT.device)
        adv_N = rollouts.advantages_N[rows].to(logprobs_NT.device)
        return self.loss_fn(logprobs_NT.float(), old_NT, adv_N, batch.response_mask_NT.float(), ref_logprobs=ref_NT,
                            global_num_tokens=g_tokens, global_num_seqs=g_seqs)

    # -------------------------------------------------------------------------------------- weight sync -----
    def sync_weights(self) -> None:
        """Push the language-model weights into the sampler (only trainable tensors change; the frozen vision
        tower is already there). Under ZeRO-3 each tensor is gathered as it is streamed."""
        if self.cfg.rollout.backend == "hf":
            return  # the HF sampler shares the trainer's model object
        trainable = {n for n, p in self.rt.unwrapped().named_parameters() if p.requires_grad}
        self.sampler.load_weights(self.rt.iter_full_weights(only=trainable))  # streamed: one tensor at a time

    # ------------------------------------------------------------------------------------------ validate ----
    def validate(self) -> dict[str, float]:
        """Avg@k accuracy on the held-out split (k = rollout.val_n), sampled with the validation settings."""
        from mhpo_vl.rollout.sampling import SamplingConfig

        r = self.cfg.rollout
        mine = self.val_samples[self.rt.rank :: self.rt.world_size]
        if not hasattr(self, "_val_prompts"):
            self._val_prompts = self.encoder.encode(mine)
        config = SamplingConfig(n=r.val_n, temperature=r.val_temperature, top_p=r.val_top_p,
                                max_tokens=r.max_tokens, seed=self.cfg.trainer.seed * 31 + 17)
        self.sampler.wake_up()
        groups = self.sampler.generate(self._val_prompts, config)
        samples = [p.sample for p, g in zip(self._val_prompts, groups) for _ in g]
        texts = [c.text for g in groups for c in g]
        out = self.reward_fn(samples, texts)
        correct, fmt, n = self.rt.all_reduce_sum([sum(v.correct for v in out.verdicts),
                                                  sum(v.format_ok for v in out.verdicts), len(out.verdicts)])
        lengths = [len(c.token_ids) for g in groups for c in g]
        return {"val/accuracy": correct / max(n, 1), "val/format_rate": fmt / max(n, 1),
                "val/response_length": float(np.mean(lengths)) if lengths else 0.0, "val/num_answers": n}

    # ------------------------------------------------------------------------------------------- metrics ----
    def step_metrics(self, rollouts: Rollouts, adv: dict, upd: dict, timer: PhaseTimer, seconds: float) -> dict:
        lengths = torch.tensor([len(c.token_ids) for c in rollouts.completions], dtype=torch.float32)
        prompt_tokens = sum(len(p.prompt_token_ids) for p in rollouts.prompts)
        local = [float(rollouts.rewards_N.sum()), float(rollouts.accuracy_N.sum()), float(rollouts.format_N.sum()),
                 float(lengths.sum()), float(len(rollouts)), float(prompt_tokens),
                 float(sum(c.finish_reason == "length" for c in rollouts.completions))]
        r_sum, a_sum, f_sum, len_sum, n, p_tok, truncated = self.rt.all_reduce_sum(local)
        metrics = {
            "reward/mean": r_sum / n, "reward/accuracy": a_sum / n, "reward/format_rate": f_sum / n,
            "response/length_mean": len_sum / n, "response/length_max": float(lengths.max()),
            "response/truncated_fraction": truncated / n, "response/entropy": rollouts.entropy_mean,
            "advantage/abs_mean": float(rollouts.advantages_N.abs().mean()),
            "rollout/logprob_diff_mean": rollouts.logprob_diff_mean, "rollout/logprob_diff_max": rollouts.logprob_diff_max,
            **adv, **upd,
            **{f"timing/{k}_s": v for k, v in timer.seconds.items()}, "timing/step_s": seconds,
            "throughput/tokens_per_s": (len_sum + p_tok) / seconds,
            "throughput/generated_tokens_per_s": len_sum / max(timer.seconds.get("rollout", seconds), 1e-9),
            "updates/nonfinite_total": float(self.nonfinite_total),
        }
        return metrics

    # -------------------------------------------------------------------------------------- checkpoints -----
    def save_checkpoint(self, val_accuracy: float | None) -> None:
        state = {
            "step": self.step_idx, "order": self.order.state_dict(), "rng": rng_state(),
            "optimizer": self.rt.optimizer_state(), "val_history": self.val_history,
            "nonfinite_total": self.nonfinite_total, "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "summary_extra": self.summary_extra, "wall_seconds": self.wall_seconds(),
        }
        full = None  # save_pretrained reads the module itself, whose parameters are whole except under ZeRO-3
        if self.rt.zero_stage == 3:  # partitioned: every rank takes part in gathering them
            weights = self.rt.iter_full_weights()
            if self.rt.is_main:
                full = {name: tensor.to("cpu") for name, tensor in weights}
            else:
                for _ in weights:
                    pass

        def save_model(folder: Path) -> None:
            self.rt.unwrapped().save_pretrained(folder, state_dict=full, safe_serialization=True)
            self.policy.processor.save_pretrained(folder)

        saved = self.ckpt.save(self.step_idx, save_model=save_model, trainer_state=state,
                               val_accuracy=val_accuracy,
                               save_shards=self.rt.save_deepspeed_state if self.rt.uses_deepspeed else None,
                               is_main=self.rt.is_main, barrier=self.rt.barrier, all_agree=self.rt.all_agree)
        console.line(f"saved checkpoint {saved.name}")

    def _restore(self, checkpoint: Path) -> None:
        state = CheckpointManager.load_trainer_state(checkpoint)
        self.step_idx = state["step"]
        self.order.load_state_dict(state["order"])
        set_rng_state(state["rng"])
        self.rt.load_optimizer_state(state["optimizer"])
        self.rt.load_deepspeed_state(str(checkpoint))
        apply_optimizer_settings(self.optimizer, self.cfg.optim)  # the config in force, not the saved groups'
        self.val_history = state["val_history"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        self.summary_extra = state.get("summary_extra", {})
        self.wall_seconds_before = state.get("wall_seconds", 0.0)
        self.resumed_from = str(checkpoint)
        self.writer.truncate_after(self.step_idx)

    # ------------------------------------------------------------------------------------------------ run ---
    @release_run_dir_on_error  # Ctrl-C or a failure: the next run in this process may take the directory
    def fit(self) -> dict[str, Any]:
        t = self.cfg.trainer
        self._fit_started = time.perf_counter()
        if self.resumed_from is None:
            if self.cfg.warmstart.steps > 0:
                before = self.validate()
                self.summary_extra["val_accuracy_before_warmstart"] = before["val/accuracy"]
                self._log_val(before, tag="before_warmstart")
                from mhpo_vl.warmstart import run_warmstart

                ws = run_warmstart(self, self.cfg.warmstart)
                self.summary_extra.update(ws)
                console.line(f"warm-start done: {ws['warmstart_steps']} steps in {ws['warmstart_seconds']:.0f} s, "
                             f"final loss {ws['warmstart_final_loss']:.3f}")
                self.sync_weights()
            if t.val_before_train:
                self._log_val(self.validate())
        bar = console.progress(total=t.total_steps, initial=self.step_idx, desc="RL", unit="step")
        try:
            while self.step_idx < t.total_steps:
                metrics = self.step()
                last_val = None  # a checkpoint is credited only with a validation of its own step
                if t.val_every > 0 and (self.step_idx % t.val_every == 0 or self.step_idx == t.total_steps):
                    val = self.validate()
                    metrics.update(val)
                    last_val = self._log_val(val, write=False)
                self.writer.write(self.step_idx, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['reward/accuracy']:.3f}",
                                val=f"{self.val_history[-1]['accuracy']:.3f}" if self.val_history else "-",
                                tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
                if t.save_every > 0 and (self.step_idx % t.save_every == 0 or self.step_idx == t.total_steps):
                    self.save_checkpoint(last_val)
        finally:
            bar.close()
        summary = self.summary(self.wall_seconds())
        if self.rt.is_main:
            write_durably(self.out / "summary.json", json.dumps(summary, indent=1))
        self.close()
        return summary

    def wall_seconds(self) -> float:
        """Time in fit() over the whole run: the earlier segments (up to the checkpoint this one resumed from)
        plus this one. Time a killed segment spent after its last checkpoint is not counted: it was redone."""
        now = time.perf_counter() - self._fit_started if self._fit_started is not None else 0.0
        return self.wall_seconds_before + now

    def _log_val(self, val: dict[str, float], *, tag: str | None = None, write: bool = True) -> float:
        record = {"step": self.step_idx, "accuracy": val["val/accuracy"], **({"tag": tag} if tag else {})}
        if tag is None:
            self.val_history.append(record)
        if write and self.rt.is_main:
            self.writer.write(self.step_idx, {**val, **({"val/tag": tag} if tag else {})})
        when = tag.replace("_", " ").replace("warmstart", "warm-start") if tag else f"at step {self.step_idx}"
        console.line(f"validation {when}: accuracy {val['val/accuracy']:.3f}, format {val['val/format_rate']:.3f} "
                     f"(Avg@{self.cfg.rollout.val_n} over {val['val/num_answers']:.0f} answers)")
        return val["val/accuracy"]

    def summary(self, seconds: float) -> dict[str, Any]:
        accs = [v["accuracy"] for v in self.val_history]
        return {
            "val_accuracy_initial": accs[0] if accs else None,
            "val_accuracy_final": accs[-1] if accs else None,
            "val_accuracy_best": max(accs) if accs else None,
            "steps": self.step_idx, "wall_seconds": seconds, "loss": self.cfg.algorithm.loss,
            "nonfinite_updates": self.nonfinite_total, "resumed_from": self.resumed_from,
            "val_history": self.val_history, **self.summary_extra,
        }

    def close(self) -> None:
        self.writer.close()
        self.grader.close()
        self.sampler.close()
        self.run_dir.release()


def _template(name_or_path: str):
    from mhpo_vl.prompts import get_template, load_template

    return load_template(name_or_path) if Path(name_or_path).is_file() else get_template(name_or_path)


def _world_size_from_env() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _pad_rows(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r[:T]
    return out


def _groups(rollouts: Rollouts):
    K = rollouts.group_size
    for g in range(len(rollouts) // K):
        s = slice(g * K, (g + 1) * K)
        yield (rollouts.prompts[s], rollouts.completions[s], rollouts.rewards_N[s], rollouts.accuracy_N[s],
               rollouts.format_N[s], rollouts.advantages_N[s])


def _informative_groups(rollouts: Rollouts) -> list:
    return [g for g in _groups(rollouts) if float(g[2].max() - g[2].min()) > 0]


def _all_groups(rollouts: Rollouts) -> list:
    return list(_groups(rollouts))
