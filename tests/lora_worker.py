"""Worker for tests/test_lora.py: LoRA (rank 4) under 1 process or torchrun with DeepSpeed, two RL updates on FIXED
rollouts (dist_worker's: one right and one wrong answer per prompt, HF sampler, no vLLM engine).

Writes <out>/rank<r>.pt with every weight before and after the updates (gathered under ZeRO-3), the merged
weights the vLLM sync would send (mhpo_vl.models.lora.merged_lora_weights through the runtime's gathering) and
the minibatch losses; rank 0 also saves a checkpoint (every rank takes part: the adapter is gathered)."""
import os
import sys

import torch
from dist_worker import _scored_rollouts, fixed_rollout_overrides


def main(out_dir: str, model_dir: str, deepspeed: str) -> None:
    from mhpo_vl.config import load_config
    from mhpo_vl.models.lora import merged_lora_weights
    from mhpo_vl.train import build_trainer

    overrides = [*fixed_rollout_overrides(out_dir, model_dir, deepspeed), "model.lora={rank: 4, alpha: 8}"]
    trainer = build_trainer(load_config(None, overrides))
    rt = trainer.rt
    rank, world = rt.rank, rt.world_size
    before = {n: t.float().cpu().clone() for n, t in rt.iter_full_weights()}
    samples = trainer.train_samples[:4]
    losses = []
    for update in range(2):
        scored = _scored_rollouts(trainer, samples[rank::world],
                                  lambda s, k, update=update: s.answer if k == 0 else str(int(s.answer) + 1 + update))
        batch = trainer.compute_advantages(scored)
        stats = trainer.update(batch, trainer.compute_old_logprobs(batch.rollouts))
        losses.extend(stats.minibatch_losses)
    after = {n: t.float().cpu().clone() for n, t in rt.iter_full_weights()}
    merged = {n: t.float().cpu().clone() for n, t in merged_lora_weights(rt.unwrapped(), rt.iter_full_weights)}
    trainable = sorted(n for n, p in rt.unwrapped().named_parameters() if p.requires_grad)
    trainer.save_checkpoint(None)
    torch.save({"before": before, "after": after, "merged": merged, "losses": losses, "world": world,
                "trainable": trainable, "checkpoint": str(trainer.ckpt.latest())},
               os.path.join(out_dir, f"rank{rank}.pt"))
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
