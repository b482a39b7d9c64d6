"""The RL loop. One training step reads as the algorithm, each phase named and timed and returning what it made:

    prompts -> Rollouts -> ScoredRollouts (rewards) -> ScoredRollouts (advantages) [-> dynamic sampling]
    -> OldLogprobs -> UpdateStats (ppo_epochs x minibatches) -> weight sync into the sampler -> metrics

Rollouts come from a colocated sampler (vLLM by default), rewards from the same grader evaluation uses, the update
from `mhpo_vl.losses` on the language model only (vision tower frozen). One process or many (accelerate + DeepSpeed).
`build_trainer(cfg)` makes every part from the config, or takes the ones it is given (tests pass fakes); the run
around the steps (fit, checkpoints, resume, summary) is mhpo_vl.run_lifecycle.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mhpo_vl import console, run_lifecycle
from mhpo_vl.checkpoint import CheckpointManager
from mhpo_vl.config import RunConfig, config_to_dict
from mhpo_vl.data_order import PromptOrder
from mhpo_vl.dynamic_sampling import dynamic_sample
from mhpo_vl.policy_logprobs import PolicyLogprobs, compute_old_logprobs
from mhpo_vl.policy_update import NonfiniteUpdates, PolicyUpdate, TrainingDivergedError
from mhpo_vl.rollout_records import OldLogprobs, Rollouts, ScoredRollouts, UpdateStats
from mhpo_vl.run_dir import RunDirectory, release_run_dir_on_error
from mhpo_vl.run_logging import metrics_writer
from mhpo_vl.trainer_parts import (load_datasets, load_policy_for, load_reference, local_minibatch_rows, make_encoder,
                                   make_loss, make_reward, make_runtime, make_sampler, prepare_policy)
from mhpo_vl.types import EncodedPrompt, Sample

__all__ = ["Trainer", "TrainerParts", "build_trainer", "Rollouts", "ScoredRollouts", "TrainingDivergedError"]


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


@dataclass
class TrainerParts:
    """What a Trainer is made of; `build_trainer` makes each from the config unless it is given one."""

    rt: Any  # mhpo_vl.distributed.Runtime
    run_dir: RunDirectory  # opened (locked) by build_trainer
    resume_from: Path | None
    policy: Any  # LoadedPolicy-like: .model, .processor, .tokenizer
    model: Any  # the policy's model and its optimiser as rt.prepare returned them
    optimizer: Any
    ref_model: Any  # None without a KL term
    encoder: Any  # .encode(samples) -> list[EncodedPrompt]
    train_samples: list[Sample]
    val_samples: list[Sample]
    loss_fn: Any  # mhpo_vl.losses.PolicyLoss-like
    reward_fn: Any  # (samples, texts, truncated=) -> RewardOutput
    sampler: Any  # .generate / .load_weights / .sleep / .wake_up / .close
    writer: Any  # MetricsWriter


class _RewardVerdicts:
    """The reward function as a grader (``grade(samples, responses) -> verdicts``): validation grades exactly as the
    training reward does, with whatever reward function the trainer was given."""

    def __init__(self, reward_fn):
        self.reward_fn = reward_fn

    def grade(self, samples, responses):
        return self.reward_fn(samples, responses).verdicts


class Trainer:
    def __init__(self, cfg: RunConfig, parts: TrainerParts):
        t = cfg.trainer
        self.cfg = cfg
        self.rt, self.run_dir, self.ckpt = parts.rt, parts.run_dir, parts.run_dir.checkpoints
        self.policy, self.model, self.optimizer = parts.policy, parts.model, parts.optimizer
        self.ref_model, self.encoder = parts.ref_model, parts.encoder
        self.train_samples, self.val_samples = parts.train_samples, parts.val_samples
        self.loss_fn, self.reward_fn, self.sampler, self.writer = (parts.loss_fn, parts.reward_fn, parts.sampler,
                                                                   parts.writer)
        self.out = Path(t.output_dir)
        self.group_size = cfg.rollout.n
        self.order = PromptOrder(len(self.train_samples), t.rollout_batch_size, seed=cfg.data.seed,
                                 shuffle=cfg.data.shuffle)
        self.scorer = PolicyLogprobs(self.rt, self.policy.tokenizer, chunk_size=t.logprob_chunk_size,
                                     temperature=cfg.rollout.temperature)
        self.policy_update = PolicyUpdate(cfg, self.rt, self.scorer, self.loss_fn,
                                          local_minibatch_rows(cfg, self.rt.world_size))
        self.nonfinite = NonfiniteUpdates(t.max_consecutive_nonfinite)
        self.step_idx = 0
        self.val_history: list[dict[str, Any]] = []
        self.summary_extra: dict[str, Any] = {}
        self.resumed_from: str | None = None
        self.wall_seconds_before = 0.0  # earlier segments of this run (up to the checkpoint resumed from)
        self.fit_started: float | None = None
        if parts.resume_from:
            run_lifecycle.restore(self, parts.resume_from)
            console.line(f"resuming from {parts.resume_from} (step {self.step_idx} of {t.total_steps})")

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
            prompts = self.encoder.encode(self.next_prompts())
        with timer("rollout"):
            self.sampler.wake_up()
            rollouts = self.generate(prompts)
        with timer("reward"):
            scored = self.score(rollouts)
        with timer("advantages"):
            batch = self.compute_advantages(scored)
        group_metrics = group_counts(batch)
        if self.cfg.algorithm.dynamic_sampling:
            with timer("dynamic_sampling"):
                batch, refill_metrics = self.refill_dynamic(batch)
                group_metrics.update(refill_metrics)
        with timer("old_logprobs"):
            self.sampler.sleep()
            old = self.compute_old_logprobs(batch.rollouts)
        with timer("update"):
            stats = self.update(batch, old)
        with timer("weight_sync"):
            self.sampler.wake_up()  # weights go into an awake engine (sleep mode offloads them on GPU)
            self.sync_weights()
        self.step_idx += 1
        return self.step_metrics(batch, old, {**group_metrics, **stats.metrics}, timer, time.perf_counter() - start)

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

    def score(self, rollouts: Rollouts) -> ScoredRollouts:
        out = self.reward_fn(rollouts.samples, [c.text for c in rollouts.completions],
                             truncated=[c.finish_reason == "length" for c in rollouts.completions])
        return ScoredRollouts(rollouts, torch.tensor(out.rewards, dtype=torch.float32),
                              torch.tensor([float(v.correct) for v in out.verdicts]),
                              torch.tensor([float(v.format_ok) for v in out.verdicts]))

    def compute_advantages(self, scored: ScoredRollouts) -> ScoredRollouts:
        from mhpo_vl.advantages import group_advantages

        a = self.cfg.algorithm
        rewards_BK = scored.rewards_N.view(-1, scored.group_size)
        return scored.with_advantages(group_advantages(rewards_BK, std_normalize=a.adv_std_normalize, eps=a.adv_eps,
                                                       unbiased_std=a.adv_unbiased_std).reshape(-1))

    def refill_dynamic(self, batch: ScoredRollouts) -> tuple[ScoredRollouts, dict[str, float]]:
        """DAPO dynamic sampling (mhpo_vl.dynamic_sampling) with this trainer's sampler, reward and prompt order."""
        def draw_more(needed: bool) -> list:
            samples = self.next_prompts()  # every rank draws each round's share, so the order stays in step
            if not needed:
                return []
            return self.compute_advantages(self.score(self.generate(self.encoder.encode(samples)))).groups()

        result = dynamic_sample(batch.groups(), want=len(batch) // batch.group_size,
                                max_rounds=self.cfg.algorithm.max_refill_rounds, draw_more=draw_more,
                                all_agree=self.rt.all_agree)
        return ScoredRollouts.from_groups(result.groups, batch.group_size), result.metrics()

    def compute_old_logprobs(self, rollouts: Rollouts) -> OldLogprobs:
        t = self.cfg.trainer
        return compute_old_logprobs(self.scorer, rollouts, micro_batch_size=t.logprob_micro_batch_size,
                                    max_tokens=t.logprob_max_tokens_per_micro_batch, ref_model=self.ref_model, use_sampler_logprobs=self.cfg.rollout.use_sampler_logprobs)

    def update(self, batch: ScoredRollouts, old: OldLogprobs) -> UpdateStats:
        return self.policy_update(batch, old, step=self.step_idx, nonfinite=self.nonfinite,
                                  latest_checkpoint=self.ckpt.latest)

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
        """Avg@k accuracy on the held-out split (k = rollout.val_n), sampled with the validation settings, through
        the evaluation pipeline `mhpo-vl eval` uses (mhpo_vl.evaluation.run_validation), graded by the reward's
        grader."""
        from mhpo_vl.evaluation import run_validation
        from mhpo_vl.rollout.sampling import SamplingConfig

        r = self.cfg.rollout
        if not hasattr(self, "_val_prompts"):
            self._val_prompts = self.encoder.encode(self.val_samples[self.rt.rank :: self.rt.world_size])
        config = SamplingConfig(n=r.val_n, temperature=r.val_temperature, top_p=r.val_top_p,
                                max_tokens=r.max_tokens, seed=self.cfg.trainer.seed * 31 + 17)
        self.sampler.wake_up()
        return run_validation(self.sampler, self._val_prompts, config, _RewardVerdicts(self.reward_fn),
                              all_reduce_sum=self.rt.all_reduce_sum)

    # ------------------------------------------------------------------------------------------- metrics ----
    def step_metrics(self, batch: ScoredRollouts, old: OldLogprobs, phase_metrics: dict, timer: PhaseTimer,
                     seconds: float) -> dict:
        rollouts = batch.rollouts
        lengths = torch.tensor([len(c.token_ids) for c in rollouts.completions], dtype=torch.float32)
        prompt_tokens = sum(len(p.prompt_token_ids) for p in rollouts.prompts)
        local = [float(batch.rewards_N.sum()), float(batch.accuracy_N.sum()), float(batch.format_N.sum()),
                 float(lengths.sum()), float(len(rollouts)), float(prompt_tokens),
                 float(sum(c.finish_reason == "length" for c in rollouts.completions))]
        r_sum, a_sum, f_sum, len_sum, n, p_tok, truncated = self.rt.all_reduce_sum(local)
        return {
            "reward/mean": r_sum / n, "reward/accuracy": a_sum / n, "reward/format_rate": f_sum / n,
            "response/length_mean": len_sum / n, "response/length_max": float(lengths.max()),
            "response/truncated_fraction": truncated / n, "response/entropy": old.entropy_mean,
            "advantage/abs_mean": float(batch.advantages_N.abs().mean()),
            "rollout/logprob_diff_mean": old.sampler_diff_mean, "rollout/logprob_diff_max": old.sampler_diff_max,
            **phase_metrics,
            **{f"timing/{k}_s": v for k, v in timer.seconds.items()}, "timing/step_s": seconds,
            "throughput/tokens_per_s": (len_sum + p_tok) / seconds,
            "throughput/generated_tokens_per_s": len_sum / max(timer.seconds.get("rollout", seconds), 1e-9),
            "throughput/padding_fraction_logprob": old.padding_fraction,
            "updates/nonfinite_total": float(self.nonfinite.total),
        }

    # ------------------------------------------------------------------------------------------------ run ---
    @release_run_dir_on_error  # Ctrl-C or a failure: the next run in this process may take the directory
    def fit(self) -> dict[str, Any]:
        return run_lifecycle.fit(self)

    def save_checkpoint(self, val_accuracy: float | None) -> None:
        run_lifecycle.save_checkpoint(self, val_accuracy)

    def close(self) -> None:
        self.writer.close()
        grader = getattr(self.reward_fn, "grader", None)
        if grader is not None:
            grader.close()
        self.sampler.close()
        self.run_dir.release()


def group_counts(batch: ScoredRollouts) -> dict[str, float]:
    from mhpo_vl.advantages import count_zero_variance_groups

    rewards_BK = batch.rewards_N.view(-1, batch.group_size)
    return {"groups/zero_variance": float(count_zero_variance_groups(rewards_BK)),
            "groups/count": float(rewards_BK.shape[0])}



# ------------------------------------------------------------------------------------------------ build ---
def build_trainer(cfg: RunConfig, *, cache_dir: str | Path = ".cache", runtime: Any = None, policy: Any = None,
                  encoder: Any = None, datasets: tuple[list[Sample], list[Sample]] | None = None,
                  loss_fn: Any = None, reward_fn: Any = None, sampler: Any = None) -> Trainer:
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
        load_from = str(resume_from) if resume_from else model_path
        policy = policy or load_policy_for(cfg, rt, load_from)
        model, optimizer = prepare_policy(cfg, rt, policy)
        encoder = encoder or make_encoder(cfg, policy)
        train, val = datasets or load_datasets(cfg, encoder)  # every prompt checked
        parts = TrainerParts(rt, run_dir, resume_from, policy, model, optimizer, load_reference(cfg, rt, model_path),
                             encoder, train, val, loss_fn or make_loss(cfg), reward_fn or make_reward(cfg),
                             sampler or make_sampler(cfg, rt, policy, load_from),
                             metrics_writer(t, enabled=rt.is_main, run_config=config_to_dict(cfg)))
        return Trainer(cfg, parts)
    except BaseException:
        run_dir.release()
        raise
