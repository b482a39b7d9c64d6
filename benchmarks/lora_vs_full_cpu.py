"""LoRA vs full fine-tuning at the real Qwen2.5-VL-3B widths on CPU, language depth cut: one run, both modes.

    python benchmarks/lora_vs_full_cpu.py [--layers 2] [--rank 64] [--alpha 64] [--threads 2] [--steps 3]

Each mode runs in a fresh subprocess (so its peak RSS is its own) on the random-weight 3B-shaped model of
mhpo_vl.models.qwen_shapes (hidden 2048, 16/2 heads, vocab 151,936 tied; the 32-block vision tower, frozen in both
modes) with `--layers` language layers, float32. Full: every language-model weight trains (embeddings included,
as in the trainer); LoRA: rank/alpha on the 7 attention and MLP projections of every language layer
(mhpo_vl.models.lora with the default targets), everything else frozen. One update = the trainer's chunked
logprob forward with grad over a 2-row batch (text prompt 256 + response 256 tokens), backward, AdamW step.
Prints per mode: trainable parameters, optimiser-state bytes (AdamW moments), peak RSS, mean update seconds
(after one warm-up update), and what a weight sync sends (tensors, bytes; LoRA: merging included, timed).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_mode(args: argparse.Namespace) -> dict:
    import torch

    from mhpo_vl.config.schema import LoraConfig
    from mhpo_vl.models.lora import add_lora, merged_lora_weights
    from mhpo_vl.models.policy import freeze_vision_tower, per_token_logprobs
    from mhpo_vl.models.qwen_shapes import build_qwen2_5_vl_3b_model
    from mhpo_vl.types import SequenceBatch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = build_qwen2_5_vl_3b_model(args.layers, "float32")
    freeze_vision_tower(model)
    if args.mode == "lora":
        add_lora(model, LoraConfig(rank=args.rank, alpha=args.alpha))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
    N, P, T = 2, 256, 256
    ids = torch.randint(0, 150_000, (N, P + T))
    batch = SequenceBatch(input_ids_NL=ids, attention_mask_NL=torch.ones_like(ids), response_ids_NT=ids[:, P:],
                          response_mask_NT=torch.ones(N, T, dtype=torch.long), model_inputs={})
    with torch.no_grad():
        old = per_token_logprobs(model, batch)[0]

    def update() -> float:
        start = time.perf_counter()
        logprobs, _ = per_token_logprobs(model, batch)
        (-(logprobs - old).exp() * batch.response_mask_NT).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    update()  # warm-up (allocates the optimiser state)
    seconds = [update() for _ in range(args.steps)]
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)

    def iter_full_weights(only=None):
        for name, tensor in model.state_dict().items():
            if only is None or name in only:
                yield name, tensor

    start = time.perf_counter()
    if args.mode == "lora":
        sent = [(n, t.numel() * t.element_size()) for n, t in merged_lora_weights(model, iter_full_weights)]
    else:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        sent = [(n, t.numel() * t.element_size()) for n, t in iter_full_weights(names)]
    sync_s = time.perf_counter() - start
    return {"mode": args.mode, "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in model.parameters()), "optimizer_state_bytes": state_bytes,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "update_s_mean": round(sum(seconds) / len(seconds), 2), "update_s": [round(s, 2) for s in seconds],
            "sync_tensors": len(sent), "sync_bytes": sum(b for _, b in sent), "sync_prepare_s": round(sync_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=64.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=("lora", "full"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)), flush=True)
        return
    results = []
    for mode in ("lora", "full"):
        cmd = [sys.executable, __file__, "--mode", mode, "--layers", str(args.layers), "--rank", str(args.rank),
               "--alpha", str(args.alpha), "--threads", str(args.threads), "--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            raise SystemExit(f"{mode} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    from mhpo_vl.runs.machine import machine_info

    print(json.dumps({"layers": args.layers, "rank": args.rank, "alpha": args.alpha, "threads": args.threads,
                      "machine": machine_info(), "results": results}, indent=1))
    print(f"\n{'':24}{'LoRA':>16}{'full':>16}")
    rows = [("trainable params", "trainable_params", "{:,}"), ("optimiser state (MB)", "optimizer_state_bytes", "mb"),
            ("peak RSS (MB)", "peak_rss_mb", "{:,}"), ("update (s)", "update_s_mean", "{:.2f}"),
            ("sync tensors", "sync_tensors", "{:,}"), ("sync bytes (MB)", "sync_bytes", "mb"),
            ("sync prepare (s)", "sync_prepare_s", "{:.3f}")]
    for label, key, fmt in rows:
        cells = [f"{r[key] / 1e6:,.1f}" if fmt == "mb" else fmt.format(r[key]) for r in results]
        print(f"{label:24}{cells[0]:>16}{cells[1]:>16}")


if __name__ == "__main__":
    main()
