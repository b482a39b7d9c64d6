"""What the real Qwen2.5-VL vocabulary costs a tiny model, against the small BPE: one demo-sized RL step's pieces.

    python benchmarks/vocab_cost.py --vocab qwen|small [--phase build|update|vllm] [--threads 2]

One process per (vocab, phase), so peak RSS is that phase's. Sizes are configs/demo_cpu.yaml's: hidden 128, 2 layers,
geosynth image prompts at the tiny processor's pixel limits, 16 prompts x n=8 = 128 rows per optimiser step (micro
batch 64), 16 response tokens. Phases:
  build   build_tiny_vl_model (the Qwen tokenizer folder is cached beforehand, as in every run after the first)
  update  the trainer's work for one minibatch: old logprobs (no grad) + per_token_logprobs forward/backward +
          AdamW step, on prompts encoded by the real PromptEncoder and random response ids
  vllm    engine start, then generate n=8 x 16 tokens for 32 prompts (the demo's rollout batch), then one weight sync
Reports wall seconds AND process CPU seconds (all threads): on a shared machine CPU seconds are the stable number.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"hidden_size": 128, "num_hidden_layers": 2}


class Clock:
    def __init__(self) -> None:
        self.results: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.results[name] = {"wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3)}
        return out


def model_dir(vocab: str) -> Path:
    from mhpo_vl.models.tiny import cached_tiny_model

    return cached_tiny_model("vl", REPO / ".cache" / "tiny_models", vocab=vocab, **SIZES)


def encoded_prompts(processor, count: int):
    from mhpo_vl.collate import PromptEncoder
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.prompts import get_template

    samples = load_dataset("geosynth", None, "train", n=count, seed=0, difficulty=0)
    encoder = PromptEncoder(processor, get_template("direct_boxed"), max_prompt_length=256)
    return encoder.encode(samples)


def phase_build(vocab: str, clock: Clock) -> dict:
    from mhpo_vl.models.qwen_tokenizer import cached_qwen_tokenizer_dir
    from mhpo_vl.models.tiny import build_tiny_vl_model

    cached_qwen_tokenizer_dir()
    with tempfile.TemporaryDirectory() as tmp:
        out = clock("build", lambda: build_tiny_vl_model(Path(tmp) / "m", vocab=vocab, **SIZES))
        size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    return {"folder_mb": round(size_mb, 1)}


def phase_update(vocab: str, clock: Clock) -> dict:
    import torch

    from mhpo_vl.collate import collate_sequences
    from mhpo_vl.models.policy import load_policy, per_token_logprobs

    policy = clock("load", lambda: load_policy(model_dir(vocab), dtype=torch.float32))
    model = policy.model.train()
    prompts = encoded_prompts(policy.processor, 16)
    gen = torch.Generator().manual_seed(0)
    first_special = policy.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # ids below it are plain BPE tokens
    rows = [p for p in prompts for _ in range(8)]  # 16 prompts x n=8
    responses = torch.randint(0, first_special, (len(rows), 16), generator=gen).tolist()
    micro = [collate_sequences(rows[i:i + 64], responses[i:i + 64], policy.tokenizer.pad_token_id) for i in (0, 64)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def old_logprobs():
        with torch.no_grad():
            return [per_token_logprobs(model, batch)[0] for batch in micro]

    def update():
        for batch, old in zip(micro, olds):
            logprobs, _ = per_token_logprobs(model, batch, with_entropy=True)
            ((logprobs - old).exp() * batch.response_mask_NT).sum().div(len(rows)).neg().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    olds = clock("old_logprobs_128_rows", old_logprobs)
    clock("update_128_rows_first", update)  # allocates AdamW state
    clock("update_128_rows", update)
    return {"trainable_params_m": round(sum(p.numel() for p in trainable) / 1e6, 2),
            "prompt_tokens_mean": round(sum(len(p.prompt_token_ids) for p in prompts) / len(prompts), 1)}


def phase_vllm(vocab: str, clock: Clock) -> dict:
    from transformers import AutoProcessor

    from mhpo_vl.rollout import SamplingConfig
    from mhpo_vl.rollout.vllm_sampler import VLLMSampler

    folder = model_dir(vocab)
    prompts = encoded_prompts(AutoProcessor.from_pretrained(folder), 32)
    sampler = clock("engine_start", lambda: VLLMSampler(folder, max_model_len=272, dtype="float32", seed=0))
    config = SamplingConfig(n=8, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)
    groups = clock("generate_32x8x16", lambda: sampler.generate(prompts, config))
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    clock("weight_sync", lambda: sampler.load_weights(weights.items()))
    sampler.close()
    return {"generated_tokens": sum(len(c.token_ids) for g in groups for c in g)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", choices=("qwen", "small"), required=True)
    parser.add_argument("--phase", choices=("build", "update", "vllm"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.phase != "build":
        model_dir(args.vocab)  # build outside the timed phase
    clock = Clock()
    extra = {"build": phase_build, "update": phase_update, "vllm": phase_vllm}[args.phase](args.vocab, clock)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"vocab": args.vocab, "phase": args.phase, "threads": args.threads, **clock.results, **extra,
                      "peak_rss_mb": round(peak_mb), "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
