"""The RL loop. One training step reads as the algorithm, each phase named and timed and returning what it made:

    prompts -> Rollouts -> ScoredRollouts (rewards) -> ScoredRollouts (advantages) [-> dynamic sampling]
    -> OldLogprobs -> UpdateStats (ppo_epochs x minibatches) -> weight sync into the sampler -> metrics

Rollouts come from a colocated sampler (vLLM by default), rewards from the same grader evaluation uses, the update
from `mhpo_vl.losses` on the language model only (vision tower frozen). One process or many (accelerate + DeepSpeed).
The trainer is given its parts (mhpo_vl.train.parts.build_trainer makes them from the config); what a checkpoint
restores is its `TrainState` (mhpo_vl.train.state); saving and restoring is mhpo_vl.train.checkpointing.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mhpo_vl.config import RunConfig
from mhpo_vl.rollout.sampling import SamplingConfig
from mhpo_vl.runs import console
from mhpo_vl.runs.atomic_io import write_durably
from mhpo_vl.runs.preemption import Preempted, PreemptionFlag
from mhpo_vl.runs.run_dir import release_run_dir_on_error
from mhpo_vl.train import checkpointing
from mhpo_vl.train.advantages import count_zero_variance_groups, group_advantages
from mhpo_vl.train.data_order import PromptOrder
from mhpo_vl.train.dynamic_sampling import dynamic_sample
from mhpo_vl.train.interfaces import (
    Closeable,
    ReportsRewardComponents,
    ReportsRewardMetrics,
    RewardFn,
    TrainerParts,
)
from mhpo_vl.train.logprobs import PolicyLogprobs, compute_old_logprobs
from mhpo_vl.train.records import OldLogprobs, Rollouts, ScoredRollouts, UpdateStats
from mhpo_vl.train.state import TrainState
from mhpo_vl.train.update import NonfiniteUpdates, PolicyUpdate, local_minibatch_rows
from mhpo_vl.types import EncodedPrompt, Sample

if TYPE_CHECKING:
    from mhpo_vl.evaluation.pipeline import GradedGroup

__all__ = ["Trainer"]

# Counts a reward result reports (ReportsRewardMetrics), summed over the step's reward calls and the ranks.
REWARD_COUNTS = ("reward/timeouts", "reward/grading_errors")


class PhaseTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class _RewardVerdicts:
    """The reward function as a grader (``grade(samples, responses) -> verdicts``): validation grades exactly as the
    training reward does, with whatever reward function the trainer was given."""

    def __init__(self, reward_fn: RewardFn):
        self.reward_fn = reward_fn
        self.rewards: list[float] = []  # of every response graded, in order (validation samples show them)

    def grade(self, samples: list[Sample], responses: list[str]) -> list[Any]:
        out = self.reward_fn(samples, responses)
        self.rewards.extend(float(r) for r in out.rewards)
        return list(out.verdicts)


def val_sample_row(index: int, group: GradedGroup, reward: float | None) -> dict[str, Any]:
    """A logged validation answer: the problem's place in the held-out set, its id, question and gold answer, and
    the first answer sampled for it (text, extracted answer, reward, correctness, why it ended)."""
    completion, verdict = group.completions[0], group.verdicts[0]
    return {"index": index, "prompt_id": group.sample.id, "question": group.sample.question,
            "response": completion.text, "prediction": getattr(verdict, "prediction", None),  # not every verdict has one
            "gold": group.sample.answer,
            "reward": reward, "correct": bool(verdict.correct), "finish_reason": completion.finish_reason}


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
        self.state = TrainState(order=PromptOrder(len(self.train_samples), t.rollout_batch_size, seed=cfg.data.seed,
                                                  shuffle=cfg.data.shuffle),
                                nonfinite=NonfiniteUpdates(t.max_consecutive_nonfinite))
        self.logprobs = PolicyLogprobs(self.rt, self.policy.tokenizer, chunk_size=t.logprob_chunk_size,
                                       temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
        self.policy_update = PolicyUpdate(cfg, self.rt, self.logprobs, self.loss_fn,
                                          local_minibatch_rows(cfg, self.rt.world_size))
        self._val_prompts: list[EncodedPrompt] | None = None
        self._reward_counts: dict[str, float] | None = None  # this step's; None: the reward reports none
        self._preemption: PreemptionFlag | None = None  # set while fit() runs
        if parts.resume_from:
            checkpointing.restore(parts.resume_from, self.state, self.rt, self.optimizer, cfg.optim)
            self.writer.truncate_after(self.state.step)
            console.line(f"resuming from {parts.resume_from} (step {self.state.step} of {t.total_steps})")

    # The state's fields most callers ask for, by their names in the loop.
    @property
    def step_idx(self) -> int:
        return self.state.step

    @property
    def nonfinite(self) -> NonfiniteUpdates:
        return self.state.nonfinite

    @property
    def resumed_from(self) -> str | None:
        return self.state.resumed_from

    # ------------------------------------------------------------------------------------------- the step ----
    def train_sampling(self) -> SamplingConfig:
        r = self.cfg.rollout
        # A seed per (step, rank) makes a resumed run draw the same samples as the uninterrupted one.
        return SamplingConfig(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                              seed=self.cfg.trainer.seed * 100_003 + self.state.step * 97 + self.rt.rank)

    def step(self) -> dict[str, Any]:
        timer = PhaseTimer()
        start = time.perf_counter()
        self._reward_counts = None
        with timer("prompts"):
            prompts = self.encoder.encode(self.next_prompts())
        with timer("rollout"):
            self.sampler.wake_up()
            rollouts = self.generate(prompts)
        with timer("reward"):
            rewarded = self.reward(rollouts)
        with timer("advantages"):
            batch = self.compute_advantages(rewarded)
        group_metrics = group_counts(batch)
        if self.cfg.algorithm.dynamic_sampling:
            with timer("dynamic_sampling"):
                batch, refill_metrics = self.refill_dynamic(batch)
                group_metrics.update(refill_metrics)
        with timer("old_logprobs"):
            self.sampler.sleep()
            old = self.compute_old_logprobs(batch.rollouts)
        with timer("update"):
            update_threads = torch.get_num_threads()  # trainer.num_threads: the engine's start must not change it
            stats = self.update(batch, old)
        with timer("weight_sync"):
            self.sampler.wake_up()  # weights go into an awake engine (sleep mode offloads them on GPU)
            self.sync_weights()
        self.state.step += 1
        return self.step_metrics(batch, old, {**group_metrics, **stats.metrics, **self.reward_component_metrics(),
                                              "process/update_threads": float(update_threads)},
                                 timer, time.perf_counter() - start)

    def next_prompts(self) -> list[Sample]:
        indices = self.state.order.next_batch()
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

    def reward(self, rollouts: Rollouts) -> ScoredRollouts:
        out = self.reward_fn(rollouts.samples, [c.text for c in rollouts.completions],
                             truncated=[c.finish_reason == "length" for c in rollouts.completions])
        if isinstance(out, ReportsRewardMetrics):  # grading timeouts and errors, so they never pass unseen
            reported = out.metrics()
            counts = self._reward_counts if self._reward_counts is not None else dict.fromkeys(REWARD_COUNTS, 0.0)
            self._reward_counts = {k: counts[k] + float(reported.get(k, 0.0)) for k in REWARD_COUNTS}
        return ScoredRollouts(rollouts, torch.tensor(out.rewards, dtype=torch.float32),
                              torch.tensor([float(v.correct) for v in out.verdicts]),
                              torch.tensor([float(v.format_ok) for v in out.verdicts]))

    def compute_advantages(self, rewarded: ScoredRollouts) -> ScoredRollouts:
        a = self.cfg.algorithm
        rewards_BK = rewarded.rewards_N.view(-1, rewarded.group_size)
        return rewarded.with_advantages(group_advantages(rewards_BK, std_normalize=a.adv_std_normalize,
                                                         eps=a.adv_eps, unbiased_std=a.adv_unbiased_std).reshape(-1))

    def refill_dynamic(self, batch: ScoredRollouts) -> tuple[ScoredRollouts, dict[str, float]]:
        """DAPO dynamic sampling (mhpo_vl.train.dynamic_sampling) with this trainer's sampler, reward and order."""
        def draw_more(needed: bool) -> list:
            samples = self.next_prompts()  # every rank draws each round's share, so the order stays in step
            if not needed:
                return []
            return self.compute_advantages(self.reward(self.generate(self.encoder.encode(samples)))).groups()

        result = dynamic_sample(batch.groups(), want=len(batch) // batch.group_size,
                                max_rounds=self.cfg.algorithm.max_refill_rounds, draw_more=draw_more,
                                all_agree=self.rt.all_agree)
        return ScoredRollouts.from_groups(result.groups, batch.group_size), result.metrics()

    def compute_old_logprobs(self, rollouts: Rollouts) -> OldLogprobs:
        t = self.cfg.trainer
        return compute_old_logprobs(self.logprobs, rollouts, micro_batch_size=t.logprob_micro_batch_size,
                                    max_tokens=t.logprob_max_tokens_per_micro_batch, ref_model=self.ref_model,
                                    use_sampler_logprobs=self.cfg.rollout.use_sampler_logprobs)

    def update(self, batch: ScoredRollouts, old: OldLogprobs) -> UpdateStats:
        return self.policy_update(batch, old, step=self.state.step, nonfinite=self.state.nonfinite,
                                  latest_checkpoint=self.ckpt.latest)

    # -------------------------------------------------------------------------------------- weight sync -----
    def sync_weights(self) -> None:
        """Push the language-model weights into the sampler (only trainable tensors change; the frozen vision
        tower is already there). Under ZeRO-3 each tensor is gathered as it is streamed."""
        if self.cfg.rollout.backend == "hf":
            return  # the HF sampler shares the trainer's model object
        if self.cfg.model.lora is not None:  # W + (alpha/r) B A of each wrapped linear, under its base name
            from mhpo_vl.models.lora import merged_lora_weights

            self.sampler.load_weights(merged_lora_weights(self.rt.unwrapped(), self.rt.iter_full_weights))
            return
        trainable = {n for n, p in self.rt.unwrapped().named_parameters() if p.requires_grad}
        self.sampler.load_weights(self.rt.iter_full_weights(only=trainable))  # streamed: one tensor at a time

    # ------------------------------------------------------------------------------------------ validate ----
    def validate(self, tag: str | None = None) -> dict[str, float]:
        """Avg@k accuracy on the held-out split (k = rollout.val_n), sampled with the validation settings, through
        the evaluation pipeline `mhpo-vl eval` uses (mhpo_vl.evaluation.run_validation), graded by the reward's
        grader; the means of a `reward.function`'s named parts as `val/reward/fn/<name>`. The answers to the first
        `trainer.val_samples_to_log` problems go to `<output_dir>/samples/step_<k>[_<tag>].jsonl` and the loggers."""
        from mhpo_vl.evaluation import run_validation

        r = self.cfg.rollout
        if self._val_prompts is None:
            self._val_prompts = self.encoder.encode(self.val_samples[self.rt.rank :: self.rt.world_size])
        config = SamplingConfig(n=r.val_n, temperature=r.val_temperature, top_p=r.val_top_p,
                                max_tokens=r.max_tokens, seed=self.cfg.trainer.seed * 31 + 17)
        self.sampler.wake_up()
        grader = _RewardVerdicts(self.reward_fn)
        graded: list[GradedGroup] = []
        metrics = run_validation(self.sampler, self._val_prompts, config, grader,
                                 all_reduce_sum=self.rt.all_reduce_sum, keep=graded.extend)
        metrics.update(self.reward_component_metrics(prefix="val/"))
        if self.cfg.trainer.val_samples_to_log > 0:
            self.log_val_samples(graded, grader.rewards, tag)
        return metrics

    def log_val_samples(self, graded: list[GradedGroup], rewards: list[float], tag: str | None) -> None:
        """The first `trainer.val_samples_to_log` held-out problems (the order of `data.val`, on every rank) with
        the first answer to each, written by the main process (MetricsWriter.write_samples)."""
        limit, world, rank = self.cfg.trainer.val_samples_to_log, self.rt.world_size, self.rt.rank
        rows, first = [], 0  # first: the group's first answer among all answers (the order rewards are in)
        for i, group in enumerate(graded):
            index = i * world + rank  # this rank holds val_samples[rank::world]
            if index < limit:
                rows.append(val_sample_row(index, group, rewards[first] if first < len(rewards) else None))
            first += len(group.completions)
        if world > 1:
            rows = [row for part in self.rt.all_gather_objects(rows) for row in part]
        if self.rt.is_main:
            self.writer.write_samples(self.state.step, sorted(rows, key=lambda row: row["index"]), tag=tag)

    def reward_component_metrics(self, prefix: str = "") -> dict[str, float]:
        """Means over every rank of the named parts of the reward's results since the last call (a reward that
        reports them: ReportsRewardComponents), as `<prefix>reward/fn/<name>`; {} for other rewards."""
        if not isinstance(self.reward_fn, ReportsRewardComponents):
            return {}
        totals = self.reward_fn.pop_component_totals()
        merged: dict[str, list[float]] = {}
        for part in self.rt.all_gather_objects(totals) if self.rt.world_size > 1 else [totals]:
            for name, (total, count) in part.items():
                into = merged.setdefault(name, [0.0, 0.0])
                into[0] += total
                into[1] += count
        return {f"{prefix}reward/fn/{name}": total / count for name, (total, count) in sorted(merged.items()) if count}

    def log_validation(self, val: dict[str, float], *, tag: str | None = None, write: bool = True) -> float:
        record = {"step": self.state.step, "accuracy": val["val/accuracy"], **({"tag": tag} if tag else {})}
        if tag is None:
            self.state.val_history.append(record)
        if write and self.rt.is_main:
            self.writer.write(self.state.step, {**val, **({"val/tag": tag} if tag else {})})
        when = tag.replace("_", " ").replace("warmstart", "warm-start") if tag else f"at step {self.state.step}"
        console.line(f"validation {when}: accuracy {val['val/accuracy']:.3f}, format {val['val/format_rate']:.3f} "
                     f"(Avg@{self.cfg.rollout.val_n} over {val['val/num_answers']:.0f} answers)")
        return val["val/accuracy"]

    # ------------------------------------------------------------------------------------------- metrics ----
    def step_metrics(self, batch: ScoredRollouts, old: OldLogprobs, phase_metrics: dict[str, float],
                     timer: PhaseTimer, seconds: float) -> dict[str, Any]:
        rollouts = batch.rollouts
        lengths = torch.tensor([len(c.token_ids) for c in rollouts.completions], dtype=torch.float32)
        prompt_tokens = sum(len(p.prompt_token_ids) for p in rollouts.prompts)
        local = [float(batch.rewards_N.sum()), float(batch.accuracy_N.sum()), float(batch.format_N.sum()),
                 float(lengths.sum()), float(len(rollouts)), float(prompt_tokens),
                 float(sum(c.finish_reason == "length" for c in rollouts.completions))]
        # The reward type is the same on every rank, so every rank adds the same number of values.
        reward_counts = self._reward_counts or {}
        r_sum, a_sum, f_sum, len_sum, n, p_tok, truncated, *counts = self.rt.all_reduce_sum(
            local + list(reward_counts.values()))
        return {  # "reward/mean" first: readers (and the tests) find a step's row by its opening keys
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
            "updates/nonfinite_total": float(self.state.nonfinite.total),
            **dict(zip(reward_counts, counts)),
        }

    # ------------------------------------------------------------------------------------------------ run ---
    @release_run_dir_on_error  # Ctrl-C or a failure: the next run in this process may take the directory
    def fit(self) -> dict[str, Any]:
        """Warm-start and first validation (a fresh run), the steps with their validations and checkpoints, the
        summary (`summary.json`), closing down. SIGTERM / SIGUSR1 stop it at the next safe point with a checkpoint
        (raises Preempted; mhpo_vl.runs.preemption)."""
        with PreemptionFlag() as self._preemption:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        t = self.cfg.trainer
        self.state.fit_started = time.perf_counter()
        if self.state.resumed_from is None:
            self.before_rl()
        bar = console.progress(total=t.total_steps, initial=self.state.step, desc="RL", unit="step")
        try:
            while self.state.step < t.total_steps:
                metrics = self.step()
                last_val = None  # a checkpoint is credited only with a validation of its own step
                if t.val_every > 0 and (self.state.step % t.val_every == 0 or self.state.step == t.total_steps):
                    val = self.validate()
                    metrics.update(val)
                    last_val = self.log_validation(val, write=False)
                self.writer.write(self.state.step, metrics)
                bar.update(1)
                history = self.state.val_history
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics['reward/accuracy']:.3f}",
                                val=f"{history[-1]['accuracy']:.3f}" if history else "-",
                                tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")
                saved = t.save_every > 0 and (self.state.step % t.save_every == 0 or self.state.step == t.total_steps)
                if saved:
                    self.save_checkpoint(last_val)
                self.stop_if_preempted(saved=saved, val_accuracy=last_val)
        finally:
            bar.close()
        result = self.state.summary(loss=self.cfg.algorithm.loss)
        if self.rt.is_main:
            write_durably(self.out / "summary.json", json.dumps(result, indent=1))
        self.close()
        return result

    def before_rl(self) -> None:
        """A fresh run: the optional supervised warm-start (validated before it) and the validation RL starts from."""
        ws_cfg = self.cfg.warmstart
        if ws_cfg.steps > 0:
            from mhpo_vl.train.warmstart import run_warmstart

            if self.cfg.trainer.val_before_train:
                before = self.validate(tag="before_warmstart")
                self.state.summary_extra["val_accuracy_before_warmstart"] = before["val/accuracy"]
                self.log_validation(before, tag="before_warmstart")
            ws = run_warmstart(self.rt.unwrapped(), self.policy.tokenizer, self.encoder, self.train_samples,
                               ws_cfg, device=self.rt.device, seed=self.cfg.trainer.seed,
                               chunk_size=self.cfg.trainer.logprob_chunk_size)
            self.state.summary_extra.update(ws)
            console.line(f"warm-start done: {ws['warmstart_steps']} steps in {ws['warmstart_seconds']:.0f} s, "
                         f"final loss {ws['warmstart_final_loss']:.3f}")
            self.sync_weights()
        val_accuracy = self.log_validation(self.validate()) if self.cfg.trainer.val_before_train else None
        saved = ws_cfg.steps > 0 and self.cfg.trainer.save_every > 0
        if saved:  # the warm-started weights as checkpoint step 0: a rerun (after a kill or SIGTERM) skips it
            self.save_checkpoint(val_accuracy)
        self.stop_if_preempted(saved=saved, val_accuracy=val_accuracy)

    def stop_if_preempted(self, *, saved: bool, val_accuracy: float | None) -> None:
        """At a safe point (a step or the warm-start finished): if SIGTERM / SIGUSR1 reached any rank, every rank
        saves this step (unless `saved` already) and the run stops with Preempted. One small all-reduce."""
        received = self._preemption.received if self._preemption is not None else None
        if self.rt.all_agree(received is None):
            return
        checkpoint = None
        if self.cfg.trainer.save_every > 0:
            if not saved:
                self.save_checkpoint(val_accuracy)
            latest = self.ckpt.latest()
            checkpoint = str(latest) if latest is not None else None
        console.line(f"{received or 'a stop signal on another rank'}: stopping after step {self.state.step}"
                     + (f", saved {checkpoint}" if checkpoint else ""))
        self.close()
        raise Preempted(received or "a stop signal on another rank", self.state.step, checkpoint)

    def save_checkpoint(self, val_accuracy: float | None) -> None:
        checkpointing.save(self.ckpt, self.state, self.rt, self.policy.processor, val_accuracy)

    def close(self) -> None:
        self.writer.close()
        if isinstance(self.reward_fn, Closeable):  # the built-in reward holds a grader pool
            self.reward_fn.close()
        self.sampler.close()
        self.run_dir.release()


def group_counts(batch: ScoredRollouts) -> dict[str, float]:
    rewards_BK = batch.rewards_N.view(-1, batch.group_size)
    return {"groups/zero_variance": float(count_zero_variance_groups(rewards_BK)),
            "groups/count": float(rewards_BK.shape[0])}
