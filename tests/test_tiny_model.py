"""The tiny random models: load with Auto classes offline, tokenize math sensibly, rebuild byte-identically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mhpo_vl.models.tiny import QWEN_SPECIAL_TOKENS, TinySizes, build_tiny_text_model, build_tiny_vl_model


def _hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


def test_vl_model_loads_with_auto_classes_and_runs_an_image_prompt(tiny_vl_model_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n<|im_start|>assistant\n")
    # 100x80 px -> smart_resize to multiples of 28 -> 84x112 px -> 6x8 patches of 14 px -> 2x2 merge -> 12 tokens.
    inputs = processor(text=[text], images=[Image.new("RGB", (100, 80), (200, 10, 10))], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    image_pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad_id).sum()) == 12
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_text_model_loads_with_auto_classes(tiny_text_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_text_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1?"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_tokenizer_round_trips_math_and_keeps_special_tokens_whole(tiny_vl_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_vl_model_dir)
    for text in ["<think>\nx = 180 - 35 - 70 = 75\n</think>\nThe answer is \\boxed{75}.", "$\\frac{3}{4}\\pi$ cm, (B) 8/11", "ünïcødé ✓"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for token in QWEN_SPECIAL_TOKENS + ["<think>", "</think>"]:
        assert tokenizer(token)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)], token
    # Digits are split one per token (Qwen's \p{N} rule), so "1805" is 4 tokens.
    assert len(tokenizer("1805")["input_ids"]) == 4
    # Learned merges make common words single tokens.
    assert len(tokenizer(" triangle")["input_ids"]) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_rebuild_is_byte_identical_and_seed_changes_weights(tiny_text_model_dir, tmp_path):
    same = build_tiny_text_model(tmp_path / "same", seed=0, vocab="small")
    other = build_tiny_text_model(tmp_path / "other", seed=1, vocab="small")
    assert _hashes(same) == _hashes(tiny_text_model_dir)
    differing = {k for k, v in _hashes(other).items() if _hashes(same)[k] != v}
    assert differing == {"model.safetensors", "tiny_model.json"}


def test_size_overrides_are_applied_and_recorded(tmp_path):
    out = build_tiny_vl_model(tmp_path / "big", vocab="small", hidden_size=256, num_hidden_layers=4)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 256
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["vision_config"]["out_hidden_size"] == 256
    # head_dim 256/4 = 64 -> 32 rotary pairs split 8:12:12 like Qwen's 16:24:24 for head_dim 128.
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [8, 12, 12]
    recorded = json.loads((out / "tiny_model.json").read_text())
    assert recorded["sizes"]["hidden_size"] == 256 and recorded["head_dim"] == 64


def test_bad_sizes_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="head_dim = hidden_size / num_attention_heads = 25"):
        build_tiny_vl_model(tmp_path / "x", hidden_size=100)
    with pytest.raises(ValueError, match="unknown tiny-model size override.*hiden_size"):
        build_tiny_text_model(tmp_path / "y", hiden_size=256)
    assert TinySizes().mrope_section() == [4, 6, 6]  # head_dim 32 -> 16 pairs
    with pytest.raises(ValueError, match="vocab must be one of \\('qwen', 'small'\\), got 'big'"):
        build_tiny_vl_model(tmp_path / "z", vocab="big")
    with pytest.raises(ValueError, match="vocab_target applies to vocab='small' only"):
        build_tiny_vl_model(tmp_path / "w", vocab_target=4096)


def test_cli_builds_a_text_model(tmp_path):
    from mhpo_vl.cli import main

    assert main(["make-tiny-model", str(tmp_path / "m"), "--text-only", "--vocab", "small", "--seed", "3",
                 "--size", "num_hidden_layers=1"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["Qwen2ForCausalLM"]
    assert json.loads((tmp_path / "m" / "tiny_model.json").read_text())["seed"] == 3


def test_qwen_vocab_model_has_the_real_tokenizer_and_3b_embedding_rows(qwen_vl_model_dir):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_vl_model_dir)
    assert len(tokenizer) == 151665 and tokenizer("Hello world")["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]) == [151652, 151655, 151653]
    config = json.loads((qwen_vl_model_dir / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == 151936  # Qwen2.5-VL-3B's padded embedding
    assert (config["image_token_id"], config["vision_start_token_id"], config["vision_end_token_id"]) == (151655, 151652, 151653)
    assert json.loads((qwen_vl_model_dir / "tiny_model.json").read_text())["sizes"]["vocab"] == "qwen"

    processor = AutoProcessor.from_pretrained(qwen_vl_model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (100, 80), (200, 10, 10))], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    # 12 image pads (see the small-vocabulary test above) between vision_start and vision_end.
    start = ids.index(151652)
    assert ids[start: start + 14] == [151652] + [151655] * 12 + [151653]
    model = AutoModelForImageTextToText.from_pretrained(qwen_vl_model_dir)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == 151936 and torch.isfinite(logits).all()


@pytest.mark.slow
def test_cli_default_is_the_qwen_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    from mhpo_vl.cli import main

    assert main(["make-tiny-model", str(tmp_path / "m"), "--size", "num_hidden_layers=1"]) == 0
    assert len(AutoTokenizer.from_pretrained(tmp_path / "m")) == 151665
    assert json.loads((tmp_path / "m" / "config.json").read_text())["text_config"]["vocab_size"] == 151936


@pytest.mark.slow
def test_vl_model_loads_in_vllm_and_generates_from_an_image_prompt(tiny_vl_model_dir):
    from PIL import Image

    from mhpo_vl.rollout.vllm_sampler import make_llm

    llm, _ = make_llm(tiny_vl_model_dir, max_model_len=512)
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n<|im_start|>assistant\n"
    from vllm import SamplingParams

    outputs = llm.generate(
        [{"prompt": text, "multi_modal_data": {"image": Image.new("RGB", (100, 80), (9, 9, 9))}}],
        SamplingParams(n=2, max_tokens=5, seed=0, logprobs=0),
        use_tqdm=False,
    )
    assert len(outputs[0].outputs) == 2
    assert all(len(c.token_ids) == 5 and len(c.logprobs) == 5 for c in outputs[0].outputs)
