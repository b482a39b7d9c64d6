"""Worker for tests/test_lora.py: LoRA (rank 4) under 1 process or torchrun with DeepSpeed, two RL updates on FIXED
rollouts (dist_worker's: one right and one wrong answer per prompt, HF sampler, no vLLM engine).

Writes <out>/rank<r>.pt with every weight before and after the updates (gathered under ZeRO-3), the merged
weights the vLLM sync would send (mhpo_vl.models.lora.merged_lora_weights through the runtime's gathering) and
the minibatch losses; rank 0 also saves a checkpoint (every rank takes part: the adapter is gathered)."""
import os
import sys

import torch
from dist_worker import _scored_rollouts


def main(out_dir: str, model_dir: str, deepspeed: str) -> None:
    from mhpo_vl.config import load_config
    from mhpo_vl.models.lora import merged_lora_weights
    from mhpo_vl.train import build_trainer

    overrides = [
        f"model.name_or_path={model_dir}", "model.dtype=float32", "model.gradient_checkpointing=false",
        "model.lora={rank: 4, alpha: 8}",
        "data.train={name: geosynth, split: train, options: {n: 8, seed: 0, difficulty: 1}}",
        "data.val={name: geosynth, split: val, options: {n: 2, seed: 0, difficulty: 1}}",
        "data.template=direct_boxed", "data.max_prompt_length=512", "data.min_pixels=null", "data.max_pixels=null",
        "rollout.backend=hf", "rollout.n=2", "rollout.max_tokens=8",
        "trainer.rollout_batch_size=4", "trainer.minibatch_size=4", "trainer.micro_batch_size=2",
        "trainer.device=cpu", f"trainer.output_dir={out_dir}/run", "trainer.resume=false",
        # Adam with a huge eps steps by lr * grad (to first order): 1 and 2 processes compare linearly
        "optim.lr=1.0", "optim.eps=1.0", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0e6",
        "trainer.ppo_epochs=2", "reward.num_workers=1", "algorithm.loss=mhpo",
    ]
    if deepspeed != "none":
        overrides.append(f"trainer.deepspeed={deepspeed}")
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
