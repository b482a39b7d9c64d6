"""Supervised warm-start (cold-start SFT) on the training set's gold answers, before RL.

Cold-start pipelines (DeepSeek-R1, many VL reasoning recipes) first teach the answer format with a little SFT.
The offline CPU demo needs it: a randomly initialised model never produces a parsable answer, so every group
would have equal rewards and RL would have no signal. The warm-start is deliberately short so RL has room to
improve; the run records validation accuracy before and after it.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from mhpo_vl import console
from mhpo_vl.config import WarmStartConfig


def sft_response_text(sample, template: str) -> str:
    return template.format(answer=sample.answer, reasoning=sample.metadata.get("solution", ""))


def run_warmstart(trainer, cfg: WarmStartConfig) -> dict[str, Any]:
    from mhpo_vl.collate import collate_sequences
    from mhpo_vl.model import per_token_logprobs

    tok = trainer.policy.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    model = trainer.rt.unwrapped()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(trainer.cfg.trainer.seed + 4242)
    samples = trainer.train_samples
    cache: dict[int, Any] = {}
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in console.progress(iterable=range(cfg.steps), desc="warm-start", unit="step"):
        idx = torch.randint(len(samples), (cfg.batch_size,), generator=gen).tolist()
        missing = [i for i in dict.fromkeys(idx) if i not in cache]
        for i, enc in zip(missing, trainer.encoder.encode([samples[i] for i in missing])):
            cache[i] = enc
        prompts = [cache[i] for i in idx]
        responses = [tok.encode(sft_response_text(samples[i], cfg.response_template), add_special_tokens=False)
                     + [end_id] for i in idx]
        batch = collate_sequences(prompts, responses, pad_token_id=tok.pad_token_id).to(trainer.rt.device)
        logprobs_NT, _ = per_token_logprobs(model, batch, chunk_size=trainer.cfg.trainer.logprob_chunk_size)
        mask = batch.response_mask_NT
        loss = -(logprobs_NT * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    return {"warmstart_steps": cfg.steps, "warmstart_final_loss": losses[-1] if losses else None,
            "warmstart_seconds": time.perf_counter() - start}
