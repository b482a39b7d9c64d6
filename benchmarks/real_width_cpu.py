"""The real Qwen2.5-VL-3B widths on CPU, language depth cut: what one trainer step on one real image costs.

    python benchmarks/real_width_cpu.py [--layers 2] [--dtype float32|bfloat16] [--threads 2]

A random-weight Qwen2.5-VL from the public 3B config (mhpo_vl.models.qwen_shapes: hidden 2048, 16 heads / 2 KV heads,
head_dim 128, M-RoPE [16, 24, 24], vocab 151,936 with tied embeddings; the full 32-block vision tower, 1280 wide,
window attention with full attention in blocks 7/15/23/31) with `--layers` language layers, the real Qwen2.5-VL tokenizer, and one real
Geometry3K fixture image encoded at EasyR1's pixel limits (min 262,144, max 4,194,304). Measures: build, the prompt
encoding, a no-grad logprob pass (vision tower + LM), and one update (forward with grad through the LM, backward,
AdamW) with the vision tower frozen. Wall and process CPU seconds, peak RSS. No vLLM here: a sizing aid for the
end-to-end real-width test, tests/test_real_width.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def timed(results: dict, name: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    results[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
                     "rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fixtures", default=str(REPO.parent / "shared" / "fixtures"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mhpo_vl.collate import PromptEncoder, collate_sequences
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.models.policy import freeze_vision_tower, per_token_logprobs
    from mhpo_vl.models.qwen_shapes import EASYR1_MAX_PIXELS, EASYR1_MIN_PIXELS, build_qwen2_5_vl_3b_model
    from mhpo_vl.models.tiny import vl_processor
    from mhpo_vl.prompts import get_template

    torch.set_num_threads(args.threads)
    results: dict = {}
    model, tokenizer = timed(results, "build", lambda: build_qwen2_5_vl_3b_model(args.layers, args.dtype))
    frozen = freeze_vision_tower(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    processor = vl_processor(tokenizer, min_pixels=EASYR1_MIN_PIXELS, max_pixels=EASYR1_MAX_PIXELS)
    sample = load_dataset("geometry3k", str(Path(args.fixtures) / "geometry3k" / "hf_format.jsonl"))[0]
    encoder = PromptEncoder(processor, get_template("reason_boxed"), max_prompt_length=4096,
                            min_pixels=EASYR1_MIN_PIXELS, max_pixels=EASYR1_MAX_PIXELS)
    prompt = timed(results, "encode_prompt", lambda: encoder.encode_one(sample))
    response = tokenizer(" <think>x = 80</think> \\boxed{80}", add_special_tokens=False)["input_ids"]
    batch = collate_sequences([prompt], [response], tokenizer.pad_token_id)

    def logprobs_no_grad():
        with torch.no_grad():
            return per_token_logprobs(model, batch)[0]

    old = timed(results, "old_logprobs", logprobs_no_grad)
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def update():
        logprobs, _ = per_token_logprobs(model, batch)
        (-(logprobs - old).exp() * batch.response_mask_NT).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed(results, "update", update)
    print(json.dumps({
        "layers": args.layers, "dtype": args.dtype, "threads": args.threads,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "vision_frozen_m": round(frozen / 1e6, 1), "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 1),
        "image_grid_thw": prompt.model_inputs["image_grid_thw"].tolist(), "prompt_tokens": len(prompt.prompt_token_ids),
        **results, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
