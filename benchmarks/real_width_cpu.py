"""The real Qwen2.5-VL-3B widths on CPU, language depth cut: what one trainer step on one real image costs.

    python benchmarks/real_width_cpu.py [--layers 2] [--dtype float32|bfloat16] [--threads 2]

A random-weight Qwen2.5-VL from the public 3B config (hidden 2048, 16 heads / 2 KV heads, head_dim 128, M-RoPE
[16, 24, 24], vocab 151,936 with tied embeddings; the full 32-block vision tower, 1280 wide, window attention with
full attention in blocks 7/15/23/31) with `--layers` language layers, the real Qwen2.5-VL tokenizer, and one real
Geometry3K fixture image encoded at EasyR1's pixel limits (min 262,144, max 4,194,304). Measures: build, the prompt
encoding, a no-grad logprob pass (vision tower + LM), and one update (forward with grad through the LM, backward,
AdamW) with the vision tower frozen. Wall and process CPU seconds, peak RSS. No vLLM here: a sizing aid for the
end-to-end real-width test (README "Tiny models"), not that test.
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

QWEN2_5_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                          max_position_embeddings=128000, rms_norm_eps=1e-6, vocab_size=151936,
                          rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]})
QWEN2_5_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                            out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                            window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)


def timed(results: dict, name: str, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    results[name] = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
                     "rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    return out


def build(layers: int, dtype):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mhpo_vl.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                           "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(QWEN2_5_VL_3B_TEXT, num_hidden_layers=layers, max_window_layers=layers,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=QWEN2_5_VL_3B_VISION, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    return model, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fixtures", default=str(REPO.parent / "shared" / "fixtures"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from mhpo_vl.collate import PromptEncoder, collate_sequences
    from mhpo_vl.datasets import load_dataset
    from mhpo_vl.model import freeze_vision_tower, per_token_logprobs
    from mhpo_vl.prompts import get_template
    from mhpo_vl.tiny_model import QWEN_VL_CHAT_TEMPLATE

    torch.set_num_threads(args.threads)
    results: dict = {}
    model, tokenizer = timed(results, "build", lambda: build(args.layers, getattr(torch, args.dtype)))
    frozen = freeze_vision_tower(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_VL_CHAT_TEMPLATE)
    sample = load_dataset("geometry3k", str(Path(args.fixtures) / "geometry3k" / "hf_format.jsonl"))[0]
    encoder = PromptEncoder(processor, get_template("reason_boxed"), max_prompt_length=4096,
                            min_pixels=262144, max_pixels=4194304)
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
