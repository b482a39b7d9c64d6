"""Supervised warm-start (cold-start SFT) on the training set's gold answers, before RL.

Cold-start pipelines (DeepSeek-R1, many VL reasoning recipes) first teach the answer format with a little SFT.
The offline CPU demo needs it: a randomly initialised model never produces a parsable answer, so every group
would have equal rewards and RL would have no signal. The warm-start is deliberately short so RL has room to
improve; the run records validation accuracy before and after it.

`stop_at_answer_prob` ends it early, at a chosen starting skill rather than a chosen step count. The model's
probability of the whole gold response, averaged over the last batches before it trains on them, is what sampling at
temperature 1 gets right on training problems (and on held-out ones, when the training set is too varied to
memorise, as the demo's 3984 distinct questions are), and it costs nothing: the SFT loss computes the same
log-probabilities. Why not a fixed step count: a small model learns to copy numbers in a sudden jump whose
timing depends on the seed (the CPU demo: 0.05 -> 0.74 held-out accuracy between steps 100 and 150 for one seed,
still 0.29 at step 400 for another), so a fixed count starts RL anywhere from "no signal" to "nothing left to learn".
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch

from mhpo_vl.config import WarmStartConfig
from mhpo_vl.runs import console
from mhpo_vl.train.interfaces import Encoder
from mhpo_vl.types import Sample


class AnswerProbStop:
    """The early-stop rule: True once the mean of the last `window` batch answer probabilities reaches `target`
    (never when `target` is None). Averaging over batches keeps one lucky batch from ending the warm-start.

    With groups (`warmstart.stop_per`, e.g. geosynth's problem `kind`), every group seen must also reach the target,
    each averaged over its own samples in the last `window` batches. Why: a model can reach a mean of 0.3 by mastering
    one kind of three and never answering the others; a kind it never gets right gives every RL group of that kind
    equal rewards, hence no signal (the CPU demo's seed 2 started RL that way and barely moved)."""

    def __init__(self, target: float | None, window: int = 10):  # 10 batches = 320 problems at the demo's size
        self.target = target
        self.recent: deque[float] = deque(maxlen=window)
        self.recent_by_group: deque[dict[str, tuple[float, int]]] = deque(maxlen=window)

    def update(self, answer_prob: float, probs_by_group: dict[str, list[float]] | None = None) -> bool:
        self.recent.append(answer_prob)
        self.recent_by_group.append({g: (sum(p), len(p)) for g, p in (probs_by_group or {}).items()})
        return (self.target is not None and len(self.recent) == self.recent.maxlen
                and sum(self.recent) / len(self.recent) >= self.target
                and all(p >= self.target for p in self.group_means.values()))

    @property
    def mean(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None

    @property
    def group_means(self) -> dict[str, float]:
        totals: dict[str, list[float]] = {}
        for batch in self.recent_by_group:
            for group, (total, count) in batch.items():
                acc = totals.setdefault(group, [0.0, 0])
                acc[0] += total
                acc[1] += count
        return {g: total / count for g, (total, count) in sorted(totals.items())}


def _group_of(sample: Sample, field: str) -> str:
    if field not in sample.metadata:
        raise ValueError(f"warmstart.stop_per={field!r}: training sample {sample.id!r} has no metadata field "
                         f"{field!r} (its fields: {', '.join(sorted(sample.metadata)) or 'none'})")
    return str(sample.metadata[field])


def sft_response_text(sample: Sample, template: str) -> str:
    return template.format(answer=sample.answer, reasoning=sample.metadata.get("solution", ""))


def run_warmstart(model: torch.nn.Module, tokenizer: Any, encoder: Encoder, samples: list[Sample],
                  cfg: WarmStartConfig, *, device: torch.device, seed: int, chunk_size: int) -> dict[str, Any]:
    """SFT of `model` (the bare module, its own AdamW) on `samples`' gold responses; the summary's warm-start fields.
    `seed`: the run's seed (the batches drawn depend on it alone); `chunk_size`: tokens per lm_head chunk."""
    from mhpo_vl.collate import collate_sequences
    from mhpo_vl.models.policy import per_token_logprobs

    tok = tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 4242)
    cache: dict[int, Any] = {}
    losses = []
    stop = AnswerProbStop(cfg.stop_at_answer_prob)
    steps_run = 0
    start = time.perf_counter()
    model.train()
    for _ in console.progress(iterable=range(cfg.steps), desc="warm-start", unit="step"):
        idx = torch.randint(len(samples), (cfg.batch_size,), generator=gen).tolist()
        missing = [i for i in dict.fromkeys(idx) if i not in cache]
        for i, enc in zip(missing, encoder.encode([samples[i] for i in missing])):
            cache[i] = enc
        prompts = [cache[i] for i in idx]
        responses = [tok.encode(sft_response_text(samples[i], cfg.response_template), add_special_tokens=False)
                     + [end_id] for i in idx]
        batch = collate_sequences(prompts, responses, pad_token_id=tok.pad_token_id).to(device)
        logprobs_NT, _ = per_token_logprobs(model, batch, chunk_size=chunk_size)
        mask = batch.response_mask_NT
        # P(gold response) before this step's update: the accuracy of sampling at temperature 1 on these problems.
        probs_N = (logprobs_NT.detach() * mask).sum(1).exp().tolist()
        by_group: dict[str, list[float]] = {}
        if cfg.stop_per:
            for i, p in zip(idx, probs_N):
                by_group.setdefault(_group_of(samples[i], cfg.stop_per), []).append(p)
        if stop.update(sum(probs_N) / len(probs_N), by_group):
            break
        loss = -(logprobs_NT * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        steps_run += 1
    optimizer.zero_grad(set_to_none=True)
    return {"warmstart_steps": steps_run, "warmstart_final_loss": losses[-1] if losses else None,
            "warmstart_answer_prob": stop.mean, "warmstart_answer_prob_by_group": stop.group_means or None,
            "warmstart_seconds": time.perf_counter() - start}
