"""PromptEncoder and collate_sequences with the tiny Qwen2.5-VL and the tiny text model."""
from __future__ import annotations

import pytest
import torch

from mhpo_vl.collate import PromptEncoder, PromptTooLongError, collate_sequences
from mhpo_vl.datasets import load_dataset
from mhpo_vl.prompts import get_template
from mhpo_vl.types import EncodedPrompt, Sample

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processor(tiny_vl_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl_model_dir)


@pytest.fixture(scope="module")
def vl_model(tiny_vl_model_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_vl_model_dir).eval()


@pytest.fixture(scope="module")
def geometry(fixtures_dir):
    return load_dataset("geometry3k", str(fixtures_dir / "geometry3k"))


def _image_pads(processor, ids) -> int:
    return sum(1 for t in ids if t == processor.image_token_id)


def test_image_tokens_match_grid(processor, geometry):
    encoder = PromptEncoder(processor, get_template("plain"), max_prompt_length=512)
    merge = processor.image_processor.merge_size
    (prompt,) = encoder.encode([geometry[0]])
    # Geometry3K id 11 is 250x251 (w x h). The tiny processor allows 3136..12544 pixels (4..16 merged tokens) in
    # multiples of 28: smart_resize first rounds to 252x252 = 63504 > 12544, so it scales by
    # beta = sqrt(251 * 250 / 12544) = 2.2366 and floors: h = floor(251 / 2.2366 / 28) * 28 = 112,
    # w = floor(250 / 2.2366 / 28) * 28 = 84. Grid (t, h, w) in 14-pixel patches = (1, 8, 6): 48 patches,
    # 48 / merge^2 = 12 image tokens.
    assert prompt.images[0].size == (84, 112)
    assert prompt.model_inputs["image_grid_thw"].tolist() == [[1, 8, 6]]
    assert prompt.model_inputs["pixel_values"].shape[0] == 48
    assert _image_pads(processor, prompt.prompt_token_ids) == 48 // merge**2 == 12
    assert prompt.prompt_text.count("<|image_pad|>") == 1  # vLLM's form: one pad per image
    assert "input_ids" not in prompt.model_inputs and "attention_mask" not in prompt.model_inputs


def test_multiple_images_and_pixel_budget(processor, geometry, fixtures_dir):
    two = Sample(id="two", source="test", split="test", question="Compare the two diagrams.",
                 images=[geometry[0].images[0], str(fixtures_dir / "geometry3k" / "14" / "img_diagram.png")],
                 answer="1", answer_type="integer")
    encoder = PromptEncoder(processor, get_template("plain"), max_prompt_length=512, max_pixels=3136)
    (prompt,) = encoder.encode([two])
    # max_pixels = 3136 (= 56 x 56). Image 1 is 250x251: beta = sqrt(250 * 251 / 3136) = 4.473,
    # h = floor(251 / 4.473 / 28) * 28 = 56, w = floor(250 / 4.473 / 28) * 28 = 28 -> grid (1, 4, 2).
    # Image 2 (id 14) is 628x453: beta = sqrt(628 * 453 / 3136) = 9.524, h = floor(453 / 9.524 / 28) * 28 = 28,
    # w = floor(628 / 9.524 / 28) * 28 = 56 -> grid (1, 2, 4). 8 patches each = 2 merged tokens each.
    # (Flooring can land under min_pixels; qwen_vl_utils does the same for vLLM, so both sides agree.)
    assert [im.size for im in prompt.images] == [(28, 56), (56, 28)]
    assert prompt.model_inputs["image_grid_thw"].tolist() == [[1, 4, 2], [1, 2, 4]]
    assert _image_pads(processor, prompt.prompt_token_ids) == 4
    assert prompt.prompt_text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2


def test_collate_layout_by_hand():
    sample = Sample(id="s", source="t", split="test", question="q")
    prompts = [EncodedPrompt(sample, "a", [5, 6, 7]), EncodedPrompt(sample, "b", [8, 9])]
    batch = collate_sequences(prompts, [[1, 2], [3]], pad_token_id=0)
    # P = 3 (longest prompt), T = 2 (longest response); prompts left-padded, responses right-padded.
    assert batch.input_ids_NL.tolist() == [[5, 6, 7, 1, 2], [0, 8, 9, 3, 0]]
    assert batch.attention_mask_NL.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
    assert batch.response_ids_NT.tolist() == [[1, 2], [3, 0]]
    assert batch.response_mask_NT.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert batch.response_mask_NT.dtype == torch.float32 and batch.model_inputs == {}
    empty = collate_sequences(prompts, [[], []], pad_token_id=0)  # T is at least 1
    assert empty.response_ids_NT.shape == (2, 1) and empty.response_mask_NT.sum() == 0


def test_forward_on_collated_batch(processor, vl_model, geometry):
    encoder = PromptEncoder(processor, get_template("reason_boxed"), max_prompt_length=512)
    prompts = encoder.encode(geometry[:3])
    responses = [[11, 12, 13], [14], [15, 16]]
    batch = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)
    grid = batch.model_inputs["image_grid_thw"]
    assert grid.shape == (3, 3) and batch.model_inputs["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    # The token-type ids are padded like the ids: 1 exactly at image pads.
    assert torch.equal(batch.model_inputs["mm_token_type_ids"].bool(), batch.input_ids_NL == processor.image_token_id)
    with torch.no_grad():
        logits = vl_model(input_ids=batch.input_ids_NL, attention_mask=batch.attention_mask_NL, **batch.model_inputs).logits
        alone = collate_sequences(prompts[1:2], responses[1:2], processor.tokenizer.pad_token_id)
        logits_alone = vl_model(input_ids=alone.input_ids_NL, attention_mask=alone.attention_mask_NL, **alone.model_inputs).logits
    P, T = batch.input_ids_NL.shape[1] - 3, 3
    assert logits.shape[:2] == (3, P + T)
    # Row 1 in the padded batch sees what it sees alone: its image (pixel_values in row order) and its positions.
    P_alone = alone.input_ids_NL.shape[1] - 1
    assert torch.allclose(logits[1, P - 1: P + 1], logits_alone[0, P_alone - 1: P_alone + 1], atol=1e-4)


def test_text_path_with_text_model(tiny_text_model_dir, geometry):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_model_dir)
    math_rows = [Sample(id="m1", source="t", split="test", question="What is 2 + 3?", answer="5", answer_type="integer")]
    encoder = PromptEncoder(tokenizer, get_template("direct_boxed"), max_prompt_length=256, use_images=False,
                            system_prompt="Be brief.")
    (prompt,) = encoder.encode(math_rows)
    assert prompt.prompt_text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?")
    assert prompt.prompt_token_ids == tokenizer(prompt.prompt_text, add_special_tokens=False)["input_ids"]
    assert prompt.model_inputs == {} and prompt.images == []

    with pytest.raises(ValueError, match="sample geometry3k/11 has 1 image\\(s\\) but use_images=False"):
        encoder.encode([geometry[0]])
    dropping = PromptEncoder(tokenizer, get_template("plain"), max_prompt_length=256, use_images=False, drop_images=True)
    (text_only,) = dropping.encode([geometry[0]])
    assert "<|image_pad|>" not in text_only.prompt_text and text_only.images == []
    with pytest.raises(ValueError, match="use_images=True needs a processor with an image processor"):
        PromptEncoder(tokenizer, get_template("plain"), max_prompt_length=256)

    model = AutoModelForCausalLM.from_pretrained(tiny_text_model_dir).eval()
    batch = collate_sequences([prompt, text_only], [[7, 8], [9]], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids_NL, attention_mask=batch.attention_mask_NL, **batch.model_inputs).logits
    assert logits.shape[:2] == batch.input_ids_NL.shape


def test_prompt_too_long_names_the_sample(processor, geometry):
    encoder = PromptEncoder(processor, get_template("plain"), max_prompt_length=512)
    full_length = len(encoder.encode([geometry[0]])[0].prompt_token_ids)
    short = PromptEncoder(processor, get_template("plain"), max_prompt_length=full_length - 1)
    with pytest.raises(PromptTooLongError) as err:
        short.encode([geometry[0]])
    assert (err.value.sample_id, err.value.length, err.value.limit) == ("11", full_length, full_length - 1)
    assert f"sample geometry3k/11 with 1 image(s) is {full_length} tokens, over max_prompt_length={full_length - 1}" in str(err.value)
