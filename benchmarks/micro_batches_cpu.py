"""Fixed-row vs token-budget micro-batches on responses of realistic, varied length: one RL step's trainer work.

    python benchmarks/micro_batches_cpu.py [--repeats 3] [--threads 2] [--min-len 32] [--max-len 512]
                                           [--max-tokens 4096] [--logprob-max-tokens 8192]

The tiny Qwen2.5-VL of configs/demo_cpu.yaml (hidden 128, 2 layers, small vocabulary) with geosynth image prompts;
16 prompts x 8 responses = 128 rows whose response lengths are drawn uniformly from [min-len, max-len] (random
tokens: the cost does not depend on which). The trainer's real passes run on them through `build_trainer` (HF
sampler, so no vLLM engine; it is not called): the old-logprob pass, then the update (2 minibatches of 64 rows, one
optimiser step each). Two settings alternate in one process, `--repeats` times each:

  rows    trainer.micro_batch_size=16, trainer.logprob_micro_batch_size=32 (rows in their shuffled order)
  tokens  trainer.max_tokens_per_micro_batch=--max-tokens, trainer.logprob_max_tokens_per_micro_batch=
          --logprob-max-tokens (defaults 4096 / 8192: below the ~9,800 / ~19,600 padded slots of a fixed 16 / 32-row
          micro-batch, whose longest response is near 512, so peak activation memory is lower, not higher)

Padding under a budget comes from the spread of lengths inside each micro-batch: rows are sorted and cut into the
fewest micro-batches the budget allows, so a smaller budget (more, smaller micro-batches) pads less (on these
lengths the defaults left 8.9% of the update's and 8.7% of the logprob pass's token slots as padding, vs 38% / 41%
with fixed rows; README "Benchmarks" has the measured table).

Prints one JSON line per pass, then the medians, the padding fractions and the ratio rows/tokens of the step time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {
    "rows": {"max_tokens_per_micro_batch": None, "logprob_max_tokens_per_micro_batch": None},
    "tokens": {"max_tokens_per_micro_batch": 4096, "logprob_max_tokens_per_micro_batch": 8192},  # --max-tokens ...
}


def make_trainer(out_dir: Path, threads: int, max_len: int):
    from mhpo_vl.config import load_config
    from mhpo_vl.train import build_trainer

    cfg = load_config(str(REPO / "configs" / "demo_cpu.yaml"), [
        "rollout.backend=hf", f"rollout.max_tokens={max_len}", "warmstart.steps=0", f"trainer.output_dir={out_dir}",
        "trainer.rollout_batch_size=16", "trainer.minibatch_size=8", "trainer.micro_batch_size=16",
        "trainer.logprob_micro_batch_size=32", f"trainer.num_threads={threads}", "trainer.loggers=[jsonl]",
        "optim.lr=1.0e-6", "reward.num_workers=1"])
    return build_trainer(cfg, cache_dir=REPO / ".cache")


def random_batch(trainer, min_len: int, max_len: int, seed: int = 0):
    import torch

    from mhpo_vl.train.records import Rollouts, ScoredRollouts
    from mhpo_vl.types import Completion

    gen = torch.Generator().manual_seed(seed)
    tok = trainer.policy.tokenizer
    plain = tok.convert_tokens_to_ids("<|endoftext|>")  # ids below it are ordinary BPE tokens
    prompts = [p for p in trainer.encoder.encode(trainer.train_samples[:16]) for _ in range(8)]
    lengths = torch.randint(min_len, max_len + 1, (len(prompts),), generator=gen).tolist()
    completions = [Completion("", torch.randint(0, plain, (n,), generator=gen).tolist(), None, "stop")
                   for n in lengths]
    n = len(prompts)
    rewards = torch.randint(0, 2, (n,), generator=gen).float()
    advantages = torch.randn(n, generator=gen)
    return ScoredRollouts(Rollouts(prompts, completions, 8), rewards, rewards, torch.ones(n), advantages)


def one_step(trainer, batch, setting: str) -> dict:
    for key, value in SETTINGS[setting].items():
        setattr(trainer.cfg.trainer, key, value)
    t0 = time.perf_counter()
    old = trainer.compute_old_logprobs(batch.rollouts)
    t1 = time.perf_counter()
    stats = trainer.update(batch, old)
    t2 = time.perf_counter()
    return {"setting": setting, "old_logprobs_s": round(t1 - t0, 3), "update_s": round(t2 - t1, 3),
            "step_s": round(t2 - t0, 3), "padding_logprob": round(old.padding_fraction, 4),
            "padding_update": round(stats.metrics["throughput/padding_fraction_update"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-len", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--logprob-max-tokens", type=int, default=8192)
    args = parser.parse_args()
    SETTINGS["tokens"] = {"max_tokens_per_micro_batch": args.max_tokens,
                          "logprob_max_tokens_per_micro_batch": args.logprob_max_tokens}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(Path(tmp) / "run", args.threads, args.max_len)
        batch = random_batch(trainer, args.min_len, args.max_len)
        one_step(trainer, batch, "rows")  # warm-up: allocator, AdamW state
        results: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for _ in range(args.repeats):
            for setting in SETTINGS:  # alternating, so drift in machine load hits both
                row = one_step(trainer, batch, setting)
                results[setting].append(row)
                print(json.dumps(row), flush=True)
        trainer.close()
    summary = {s: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "setting"}
               for s, rows in results.items()}
    lengths = [len(c.token_ids) for c in batch.rollouts.completions]
    print(json.dumps({"summary": summary, "rows": len(lengths), "response_len_mean": statistics.mean(lengths),
                      "step_ratio_rows_over_tokens": round(summary["rows"]["step_s"] / summary["tokens"]["step_s"], 2),
                      "max_tokens": args.max_tokens, "logprob_max_tokens": args.logprob_max_tokens,
                      "threads": args.threads, "loadavg_1min": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
