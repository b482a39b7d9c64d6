"""Worker for tests/test_distributed.py: two RL updates on FIXED rollouts, on 1 process or under torchrun.

Each rank takes its share of the same 4 prompts x 2 responses; rewards, advantages, old logprobs and the update
run through the real Trainer (HF sampler so no vLLM engine is needed). Writes <out>/rank<r>.pt with the trainable
weights after the updates, the minibatch losses (summed over ranks) and the count of skipped updates. With a 4th
argument "nan", rank 0's first micro-batch loss is made NaN (by the loss part build_trainer is given). With a 5th
argument "tokens", both passes cut micro-batches by a token budget instead of 2 rows each (mhpo_vl.train.micro_batches).
"""
import dataclasses
import os
import sys

import torch

# A budget of about one row (prompts ~100-130 tokens with their image, answers 5-8): micro-batches of 1-2 rows,
# so the grouping differs from the fixed 2 rows and the ranks may need different counts (they must agree).
TOKEN_BUDGET = 200


def fixed_rollout_overrides(out_dir: str, model_dir: str, deepspeed: str) -> list[str]:
    """The config of the fixed-rollout workers (this one and lora_worker.py): the tiny model at float32, 4 prompts x
    2 answers, HF sampler, two passes per update (the second off-policy, so its loss is not 0)."""
    overrides = [
        f"model.name_or_path={model_dir}", "model.dtype=float32", "model.gradient_checkpointing=false",
        "data.train={name: geosynth, split: train, options: {n: 8, seed: 0, difficulty: 1}}",
        "data.val={name: geosynth, split: val, options: {n: 2, seed: 0, difficulty: 1}}",
        "data.template=direct_boxed", "data.max_prompt_length=512", "data.min_pixels=null", "data.max_pixels=null",
        "rollout.backend=hf", "rollout.n=2", "rollout.max_tokens=8",
        "trainer.rollout_batch_size=4", "trainer.minibatch_size=4", "trainer.micro_batch_size=2",
        "trainer.device=cpu", f"trainer.output_dir={out_dir}/run", "trainer.resume=false",
        # Adam with a huge eps steps by lr * grad (to first order): weights then compare gradients linearly,
        # instead of Adam's sign-like steps amplifying float noise where a gradient is ~0.
        "optim.lr=1.0", "optim.eps=1.0", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0e6",
        "trainer.ppo_epochs=2", "reward.num_workers=1", "algorithm.loss=mhpo",
    ]
    if deepspeed != "none":
        overrides.append(f"trainer.deepspeed={deepspeed}")
    return overrides


def main(out_dir: str, model_dir: str, deepspeed: str, nan_first_micro: str = "finite", micro: str = "rows") -> None:
    from mhpo_vl.config import load_config
    from mhpo_vl.train import build_trainer
    from mhpo_vl.train.parts import make_loss, make_runtime

    overrides = fixed_rollout_overrides(out_dir, model_dir, deepspeed)
    if micro == "tokens":
        overrides += [f"trainer.max_tokens_per_micro_batch={TOKEN_BUDGET}",
                      f"trainer.logprob_max_tokens_per_micro_batch={TOKEN_BUDGET}"]
    cfg = load_config(None, overrides)
    runtime = make_runtime(cfg)
    loss_fn = make_loss(cfg)
    if nan_first_micro == "nan" and runtime.rank == 0:
        # Rank 0's very first micro-batch loss is NaN: every rank must skip that whole minibatch together.
        loss_fn = _NaNOnFirstCall(loss_fn)
    trainer = build_trainer(cfg, runtime=runtime, loss_fn=loss_fn)
    rank, world = trainer.rt.rank, trainer.rt.world_size
    skipped = 0
    samples = trainer.train_samples[:4]
    losses, padding = [], []
    for update in range(2):
        # one right and one wrong answer per prompt, so advantages are +-1
        scored = _scored_rollouts(trainer, samples[rank::world],
                                  lambda s, k, update=update: s.answer if k == 0 else str(int(s.answer) + 1 + update))
        batch = trainer.compute_advantages(scored)
        old = trainer.compute_old_logprobs(batch.rollouts)
        stats = trainer.update(batch, old)
        padding.append((old.padding_fraction, stats.metrics["throughput/padding_fraction_update"]))
        skipped += stats.skipped
        losses.extend(stats.minibatch_losses)
    refill = None
    if deepspeed == "none":  # (the HF sampler cannot generate under multi-rank ZeRO-3; refill is not DeepSpeed's)
        refill = _refill_where_only_rank1_needs_it(trainer, samples)
    model = trainer.rt.unwrapped()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {n: t.float().cpu() for n, t in trainer.rt.iter_full_weights(only=trainable)}
    torch.save({"weights": weights, "losses": losses, "world": world, "skipped": skipped, "refill": refill,
                "order": trainer.state.order.state_dict(), "padding": padding,
                "old_logprobs": [t.clone() for t in old.old]}, os.path.join(out_dir, f"rank{rank}.pt"))
    trainer.close()


class _NaNOnFirstCall:
    """The configured loss, except that its first call's loss is NaN."""

    def __init__(self, loss_fn):
        self.loss_fn, self.calls = loss_fn, 0

    def __call__(self, *args, **kwargs):
        out = self.loss_fn(*args, **kwargs)
        self.calls += 1
        return dataclasses.replace(out, loss=out.loss * float("nan")) if self.calls == 1 else out


def _refill_where_only_rank1_needs_it(trainer, samples):
    """DAPO dynamic sampling: rank 0's groups all have reward variance, rank 1's none (both answers wrong), so
    only rank 1 needs refill rounds; every rank must still draw each round's prompts to keep the order in step."""
    rank, world = trainer.rt.rank, trainer.rt.world_size
    trainer.cfg.algorithm.max_refill_rounds = 2
    scored = _scored_rollouts(trainer, samples[rank::world],
                              lambda s, k: s.answer if (k == 0 and rank == 0) else str(int(s.answer) + 1 + k))
    _, refill = trainer.refill_dynamic(trainer.compute_advantages(scored))
    return refill


def _scored_rollouts(trainer, mine, answer_of):
    """Two fixed completions "\\boxed{answer_of(sample, k)}" (k = 0, 1) per prompt, scored by the trainer."""
    from mhpo_vl.train import Rollouts
    from mhpo_vl.types import Completion

    tok = trainer.policy.tokenizer
    rows_p, rows_c = [], []
    for s, p in zip(mine, trainer.encoder.encode(mine)):
        for k in range(2):
            text = f"\\boxed{{{answer_of(s, k)}}}"
            rows_p.append(p)
            rows_c.append(Completion(text=text, token_ids=tok.encode(text, add_special_tokens=False),
                                     sampler_logprobs=None, finish_reason="stop"))
    return trainer.reward(Rollouts(rows_p, rows_c, 2))


if __name__ == "__main__":
    main(*sys.argv[1:6])
