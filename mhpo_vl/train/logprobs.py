"""The trainer's forward passes over rollout rows: collate, log-probabilities of the distribution the sampler drew
from, and the old-logprob phase of a step (old and reference logprobs, entropy, the sampler-vs-trainer check)."""
from __future__ import annotations

from typing import Any

import torch

from mhpo_vl.train.micro_batches import PaddingCount, plan_micro_batches
from mhpo_vl.train.records import OldLogprobs, Rollouts
from mhpo_vl.types import Completion, SequenceBatch


class PolicyLogprobs:
    """Rows of `Rollouts` -> SequenceBatch -> per-token logprobs, through the runtime (DeepSpeed's engine sees it)."""

    def __init__(self, rt, tokenizer, *, chunk_size: int, temperature: float, top_p: float = 1.0):
        from mhpo_vl.models.policy import vision_token_ids

        self.rt = rt
        self.pad_token_id = tokenizer.pad_token_id
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.top_p = top_p
        self.banned_ids = vision_token_ids(tokenizer)

    def batch(self, rollouts: Rollouts, rows: list[int]) -> SequenceBatch:
        from mhpo_vl.collate import collate_sequences

        batch = collate_sequences([rollouts.prompts[i] for i in rows],
                                  [rollouts.completions[i].token_ids for i in rows], pad_token_id=self.pad_token_id)
        return batch.to(self.rt.device)

    def of(self, model, batch: SequenceBatch, *, with_entropy: bool = False, run_idle_vision_tower: bool = False):
        """Logprobs of the distribution the sampler drew from: temperature applied, the vision tokens banned and
        renormalised over the top-p nucleus, as vLLM's processed logprobs are, so on-policy ratios are 1 up to
        float error (docs/training.md, "top-p and the ratio")."""
        from mhpo_vl.models.policy import per_token_logprobs

        return per_token_logprobs(model, batch, chunk_size=self.chunk_size, with_entropy=with_entropy,
                                  temperature=self.temperature, suppressed_token_ids=self.banned_ids,
                                  top_p=self.top_p, run_idle_vision_tower=run_idle_vision_tower)

    def forward(self, batch: SequenceBatch, *, with_entropy: bool = False):
        idle_tower = self._needs_idle_vision_tower(batch)
        return self.rt.forward(lambda m: self.of(m, batch, with_entropy=with_entropy,
                                                 run_idle_vision_tower=idle_tower))

    def _needs_idle_vision_tower(self, batch: SequenceBatch) -> bool:
        """Whether this rank's batch has no images while another rank's has, under ZeRO-3 with several ranks (one
        small all-reduce per forward there, none otherwise). ZeRO-3 gathers each module's weight partitions with a
        collective as the module runs, so a rank that skipped the vision tower would pair its next gathers with the
        other ranks' tower gathers: "collective mismatch" on gloo, a hang on NCCL (issue 22). The rank without
        images then runs the tower on a dummy image (mhpo_vl.models.policy._idle_vision_tower_after_embedding).

        Chosen over keeping the frozen tower out of ZeRO-3's partitioning: that needs the tower taken out of the
        module DeepSpeed wraps (and put back for checkpoints and the weight sync), whereas the dummy image costs
        one merged image token through the tower on such ranks only, and the gathers, which the ranks with images
        need anyway (docs/distributed.md)."""
        if self.rt.world_size == 1 or self.rt.zero_stage != 3:
            return False
        from mhpo_vl.models.policy import is_vision_config

        if not is_vision_config(getattr(self.rt.unwrapped(), "config", None)):
            return False
        has_images = batch.model_inputs.get("pixel_values") is not None
        return not self.rt.all_agree(not has_images) and not has_images


@torch.no_grad()
def compute_old_logprobs(policy_logprobs: PolicyLogprobs, rollouts: Rollouts, *, micro_batch_size: int,
                         max_tokens: int | None = None, ref_model: Any = None,
                         use_sampler_logprobs: bool = False) -> OldLogprobs:
    """Old logprobs are recomputed by the trainer (default): the same numerics as the update, so on the first
    minibatch the ratio is exactly 1. With `use_sampler_logprobs` the sampler's values are used. Micro-batches:
    ``micro_batch_size`` rows each, or a token budget (``max_tokens``, mhpo_vl.train.micro_batches)."""
    model = policy_logprobs.rt.unwrapped()
    was_training = model.training
    model.eval()
    try:
        groups = plan_micro_batches(range(len(rollouts)), rollouts.row_sizes(), rows_per_micro=micro_batch_size,
                                    max_tokens=max_tokens, agree_count=policy_logprobs.rt.max_over_ranks)
        old, ref, entropy_mean, padding = _trainer_logprobs(policy_logprobs, rollouts, groups, ref_model)
    finally:
        model.train(was_training)
    diff_mean, diff_max = sampler_logprob_gap(policy_logprobs.rt, rollouts.completions, old)
    if use_sampler_logprobs:
        old = sampler_logprobs(rollouts.completions)
    return OldLogprobs(old, ref, entropy_mean, diff_mean, diff_max, padding)


def _trainer_logprobs(policy_logprobs: PolicyLogprobs, rollouts: Rollouts, groups: list[list[int]], ref_model: Any):
    """([N] of [T_i] policy logprobs in row order, the same of the reference model or None, mean entropy over all
    ranks, this pass's padding fraction)."""
    n = len(rollouts)
    old: list[torch.Tensor | None] = [None] * n
    ref: list[torch.Tensor | None] = [None] * n
    sizes = rollouts.row_sizes()
    padding = PaddingCount()
    ent_sum = torch.zeros((), dtype=torch.float64, device=policy_logprobs.rt.device)
    ent_count = torch.zeros((), dtype=torch.float64, device=policy_logprobs.rt.device)
    for rows in groups:
        padding.add(sizes, rows)
        batch = policy_logprobs.batch(rollouts, rows)
        lp_NT, ent_NT = policy_logprobs.forward(batch, with_entropy=True)
        mask = batch.response_mask_NT
        ent_sum += (ent_NT * mask).sum().double()
        ent_count += mask.sum().double()
        ref_NT = policy_logprobs.of(ref_model, batch)[0] if ref_model is not None else None
        for j, i in enumerate(rows):
            t_i = sizes[i].response
            old[i] = lp_NT[j, :t_i].float().cpu()
            if ref_NT is not None:
                ref[i] = ref_NT[j, :t_i].float().cpu()
    ent_sum, ent_count = policy_logprobs.rt.all_reduce_sum([ent_sum.item(), ent_count.item()])  # over every rank's tokens
    return old, (ref if ref_model is not None else None), ent_sum / max(ent_count, 1.0), padding.fraction


def sampler_logprob_gap(rt, completions: list[Completion], trainer_logprobs: list[torch.Tensor]) -> tuple[float, float]:
    """(mean, max) |sampler logprob - trainer logprob| over every sampled token, all ranks: the two compute the same
    distribution from the same weights, so this is float error (~1e-6 in float32) unless the weight sync or the
    numerics broke. NaN when the sampler reported no logprobs."""
    total, count, largest = 0.0, 0, 0.0
    for c, mine in zip(completions, trainer_logprobs):
        if c.sampler_logprobs is None or not len(c.sampler_logprobs):
            continue
        diff = (torch.tensor(c.sampler_logprobs, dtype=torch.float32) - mine).abs()
        total, count, largest = total + float(diff.sum()), count + diff.numel(), max(largest, float(diff.max()))
    total, count = rt.all_reduce_sum([total, count])
    largest = max(rt.all_gather_objects(largest))
    return (total / count if count else float("nan")), (largest if count else float("nan"))


def sampler_logprobs(completions: list[Completion]) -> list[torch.Tensor]:
    old = []
    for c in completions:
        if c.sampler_logprobs is None:
            raise RuntimeError("rollout.use_sampler_logprobs is set but the sampler returned no logprobs")
        old.append(torch.tensor(c.sampler_logprobs, dtype=torch.float32))
    return old
