"""Random-weight Qwen2.5-VL models at a real checkpoint's shapes, built offline (no download).

``build_qwen2_5_vl_3b_shape(out_dir, text_layers=2)`` writes a folder that loads like ``Qwen/Qwen2.5-VL-3B-Instruct``
(transformers' Auto classes and vLLM): the public 3B config's widths (hidden 2048, 16 query / 2 KV heads, head_dim
128, M-RoPE sections [16, 24, 24], vocab rows 151,936 with tied embeddings; the full 32-block vision tower, 1280
wide, window attention with full attention in blocks 7/15/23/31), the real Qwen2.5-VL tokenizer
(mhpo_vl.models.qwen_tokenizer) and chat template, and an image processor at EasyR1's pixel limits. ``text_layers`` cuts the
language depth (36 in the real model) so it fits a CPU; None keeps all 36 (the GPU check). Used by the real-width
test (tests/test_real_width.py) and benchmarks/real_width_cpu.py.
"""
from __future__ import annotations

from pathlib import Path

# Qwen/Qwen2.5-VL-3B-Instruct config.json (public), the fields that set shapes.
QWEN2_5_VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                          num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, vocab_size=151936,
                          rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                           "mrope_section": [16, 24, 24]})
QWEN2_5_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                            out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                            window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
# EasyR1's default image limits (data.min_pixels / max_pixels in its geometry3k recipe).
EASYR1_MIN_PIXELS = 262144
EASYR1_MAX_PIXELS = 4194304


def qwen2_5_vl_3b_config(tokenizer, text_layers: int | None = None):
    """The 3B ``Qwen2_5_VLConfig``, special-token ids from ``tokenizer``, language depth ``text_layers`` (None: 36)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                           "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    layers = QWEN2_5_VL_3B_TEXT["num_hidden_layers"] if text_layers is None else text_layers
    return Qwen2_5_VLConfig(
        text_config=dict(QWEN2_5_VL_3B_TEXT, num_hidden_layers=layers, max_window_layers=layers,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=QWEN2_5_VL_3B_VISION, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def build_qwen2_5_vl_3b_model(text_layers: int | None = None, dtype: str = "bfloat16", seed: int = 0):
    """(model, tokenizer): the random-weight model in memory, in ``dtype``."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mhpo_vl.models.qwen_tokenizer import load_qwen_tokenizer

    tokenizer = load_qwen_tokenizer()
    config = qwen2_5_vl_3b_config(tokenizer, text_layers)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: a float32 copy of the 3B would take 15 GB
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = eos, eos[1]
    return model, tokenizer


def build_qwen2_5_vl_3b_shape(out_dir: str | Path, text_layers: int | None = 2, dtype: str = "bfloat16",
                              seed: int = 0) -> Path:
    """Write the random-weight 3B-shaped model, tokenizer and processor (EasyR1 pixel limits) to ``out_dir``."""
    from mhpo_vl.models.tiny import save_vl_processor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_qwen2_5_vl_3b_model(text_layers, dtype, seed)
    model.save_pretrained(out_dir)
    save_vl_processor(out_dir, tokenizer, min_pixels=EASYR1_MIN_PIXELS, max_pixels=EASYR1_MAX_PIXELS)
    return out_dir
