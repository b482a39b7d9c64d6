"""The policy update of one RL step: ppo_epochs passes over shuffled minibatches; each minibatch is one optimiser
step built from micro-batches whose losses are normalised by the minibatch's GLOBAL token/sequence counts (all
ranks), so the gradient wanted is the sum over micro-batches and ranks (see mhpo_vl.distributed).

Host syncs: the loss metrics and minibatch losses stay tensors until the end of the update (one transfer). Whether a
minibatch's loss was finite is agreed by every rank once per optimiser step; under DeepSpeed, whose backward
reduces gradients across ranks, before each micro-batch's backward instead (a non-finite loss must not reach it).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mhpo_vl.config import RunConfig
from mhpo_vl.train.interfaces import LossFn, Runtime
from mhpo_vl.train.logprobs import PolicyLogprobs
from mhpo_vl.train.lr_schedule import lr_at, total_updates, updates_per_step
from mhpo_vl.train.micro_batches import PaddingCount, plan_micro_batches
from mhpo_vl.train.records import OldLogprobs, ScoredRollouts, UpdateStats


def local_minibatch_rows(cfg: RunConfig, world: int) -> int:
    """Rows of one optimiser update on this rank (its share of trainer.minibatch_size prompts x rollout.n)."""
    t = cfg.trainer
    if t.rollout_batch_size % world or t.minibatch_size % world:
        raise ValueError(f"trainer.rollout_batch_size ({t.rollout_batch_size}) and trainer.minibatch_size "
                         f"({t.minibatch_size}) must be multiples of the number of processes ({world})")
    return (t.minibatch_size // world) * cfg.rollout.n


class TrainingDivergedError(RuntimeError):
    pass


@dataclass
class NonfiniteUpdates:
    """Updates skipped for a non-finite loss or gradient: in total and in a row (the run stops at `limit`)."""

    limit: int
    total: int = 0
    in_a_row: int = 0

    def record(self, applied: bool, *, where: Callable[[], str]) -> None:
        """Count one update; TrainingDivergedError (naming `where()`) at `limit` skipped in a row."""
        if applied:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise TrainingDivergedError(
                f"{self.in_a_row} updates in a row had a non-finite loss or gradient (limit "
                f"trainer.max_consecutive_nonfinite={self.limit}); stopping at {where()}")


class LossMetrics:
    """The loss module's 0-dim metric tensors over micro-batches: means, and `*_max` / `*_min` extremes (NaN
    values ignored, as Python's max/min ignore them). Tensors until `floats()`: no host sync per micro-batch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.extremes: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            v = value.detach().double()
            if name.endswith("_max") or name.endswith("_min"):
                pick, start = (torch.fmax, -math.inf) if name.endswith("_max") else (torch.fmin, math.inf)
                self.extremes[name] = pick(self.extremes.get(name, torch.full_like(v, start)), v)
            else:
                self.sums[name] = self.sums.get(name, 0.0) + v
                self.counts[name] = self.counts.get(name, 0) + 1

    def floats(self) -> dict[str, float]:
        names = [*self.sums, *self.extremes]
        if not names:
            return {}
        values = [self.sums[k] / self.counts[k] for k in self.sums] + list(self.extremes.values())
        return {f"loss/{k}": v for k, v in zip(names, torch.stack(values).tolist())}


class PolicyUpdate:
    def __init__(self, cfg: RunConfig, rt: Runtime, policy_logprobs: PolicyLogprobs, loss_fn: LossFn,
                 local_minibatch_rows: int):
        self.cfg, self.rt, self.policy_logprobs, self.loss_fn = cfg, rt, policy_logprobs, loss_fn
        self.local_minibatch_rows = local_minibatch_rows
        self.padding = PaddingCount()  # of the current update's micro-batches

    def __call__(self, batch: ScoredRollouts, old: OldLogprobs, *, step: int, nonfinite: NonfiniteUpdates,
                 latest_checkpoint: Callable[[], Any] = lambda: None) -> UpdateStats:
        t = self.cfg.trainer
        n = len(batch)
        gen = torch.Generator().manual_seed(t.seed * 7919 + step)
        metrics = LossMetrics()
        grad_norms: list[float] = []
        losses: list[torch.Tensor] = []  # this rank's share of each minibatch's loss; summed over ranks below
        skipped = 0
        lr = float("nan")
        self.padding = PaddingCount()
        self.rt.model.train()
        for _epoch in range(t.ppo_epochs):
            perm = torch.randperm(n, generator=gen).tolist()
            for lo in range(0, n, self.local_minibatch_rows):
                # The schedule is a function of the update's index alone: a resumed run continues it exactly.
                lr = lr_at(step * updates_per_step(t) + len(grad_norms), self.cfg.optim, total_updates(t))
                self.rt.set_lr(lr)
                loss, finite = self._accumulate(batch, old, perm[lo : lo + self.local_minibatch_rows], metrics)
                losses.append(loss)
                norm, applied = self.rt.step() if finite else self._discard()
                grad_norms.append(norm)
                skipped += not (applied and finite)
                nonfinite.record(applied and finite,
                                 where=lambda: f"step {step}. The latest checkpoint is {latest_checkpoint()}.")
        return self._stats(metrics, losses, grad_norms, skipped, lr)

    def _accumulate(self, batch: ScoredRollouts, old: OldLogprobs, rows: list[int], metrics: LossMetrics):
        """Forward and backward every micro-batch of one minibatch; (its loss tensor, whether every rank's loss was
        finite)."""
        t = self.cfg.trainer
        sizes = batch.rollouts.row_sizes()
        micro = plan_micro_batches(rows, sizes, rows_per_micro=t.micro_batch_size,
                                   max_tokens=t.max_tokens_per_micro_batch, agree_count=self.rt.max_over_ranks)
        lengths = [sizes[i].response for i in rows]
        # The loss module's global normalisers: valid tokens and NON-EMPTY rows of the whole minibatch.
        g_tokens, g_seqs = (max(1.0, g) for g in self.rt.all_reduce_sum([sum(lengths), sum(n > 0 for n in lengths)]))
        check_each = self.rt.uses_deepspeed
        finite = True
        total = torch.zeros((), dtype=torch.float64, device=self.rt.device)
        for k, mrows in enumerate(micro):
            self.padding.add(sizes, mrows)
            out = self.micro_loss(batch, old, mrows, g_tokens, g_seqs)
            total = total + out.loss.detach().double()
            # Every rank must take the same path: a DeepSpeed backward (which reduces gradients) or an optimiser
            # step on some ranks but not others would leave the others waiting forever.
            if check_each:
                finite = finite and self.rt.all_agree(bool(torch.isfinite(out.loss)))
            if finite:
                self.rt.backward(out.loss, k == len(micro) - 1)
            metrics.add(out.metrics)
        if not check_each:  # plain torch: a non-finite micro-batch's gradient is dropped with the rest below
            finite = self.rt.all_agree(bool(torch.isfinite(total)))
        return total, finite

    def micro_loss(self, batch: ScoredRollouts, old: OldLogprobs, rows: list[int], g_tokens: float, g_seqs: float):
        seq = self.policy_logprobs.batch(batch.rollouts, rows)
        logprobs_NT, _ = self.policy_logprobs.forward(seq)
        T = logprobs_NT.shape[1]
        old_NT = pad_rows([old.old[i] for i in rows], T).to(logprobs_NT.device)
        ref_NT = None if old.ref is None else pad_rows([old.ref[i] for i in rows], T).to(logprobs_NT.device)
        adv_N = batch.advantages_N[rows].to(logprobs_NT.device)
        return self.loss_fn(logprobs_NT.float(), old_NT, adv_N, seq.response_mask_NT.float(), ref_logprobs=ref_NT,
                            global_num_tokens=g_tokens, global_num_seqs=g_seqs)

    def _discard(self) -> tuple[float, bool]:
        """Drop the accumulated gradient of a minibatch that had a non-finite loss."""
        self.rt.discard_gradients()
        return float("nan"), False

    def _stats(self, metrics: LossMetrics, losses: list[torch.Tensor], grad_norms: list[float], skipped: int,
               lr: float) -> UpdateStats:
        out = metrics.floats()
        # The loss of each whole minibatch (all micro-batches, all ranks), averaged over the step's updates.
        totals = self.rt.all_reduce_sum(torch.stack(losses).tolist()) if losses else []
        out["loss/total"] = float(np.mean(totals)) if totals else float("nan")
        finite_norms = [g for g in grad_norms if math.isfinite(g)]
        out["grad_norm"] = float(np.mean(finite_norms)) if finite_norms else float("nan")
        out["grad_norm_max"] = float(np.max(finite_norms)) if finite_norms else float("nan")
        out["updates/skipped_nonfinite"] = float(skipped)
        out["updates/applied"] = float(len(grad_norms) - skipped)
        out["optim/lr"] = lr  # the learning rate of the step's last update
        out["throughput/padding_fraction_update"] = self.padding.fraction  # this rank's update passes
        return UpdateStats(out, totals, len(grad_norms) - skipped, skipped)


def pad_rows(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r[:T]
    return out
