"""Small prompt-encoding helpers for the model/rollout tests (independent of mhpo_vl.collate on purpose).

They follow the EncodedPrompt contract in mhpo_vl/types.py: prompt_text holds one <|image_pad|> per image,
prompt_token_ids have the pads expanded, model_inputs hold the processor's other outputs.
"""
from __future__ import annotations

import torch
from PIL import Image

from mhpo_vl.types import EncodedPrompt, Sample, SequenceBatch


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic noisy RGB image (different seeds give different pixels)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def encode_image_prompt(processor, question: str, image: Image.Image, sample_id: str = "q") -> EncodedPrompt:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    sample = Sample(id=sample_id, source="test", split="test", question=question, images=[image])
    return EncodedPrompt(
        sample=sample,
        prompt_text=text,
        prompt_token_ids=enc["input_ids"][0].tolist(),
        images=[image],
        model_inputs={"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]},
    )


def encode_text_prompt(tokenizer, question: str, sample_id: str = "q") -> EncodedPrompt:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text)["input_ids"]
    sample = Sample(id=sample_id, source="test", split="test", question=question)
    return EncodedPrompt(sample=sample, prompt_text=text, prompt_token_ids=list(ids))


def make_batch(prompts: list[EncodedPrompt], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    """Left-pad prompts to P, right-pad responses to T; concatenate model_inputs in row order."""
    P = max(len(p.prompt_token_ids) for p in prompts)
    T = max(len(r) for r in responses)
    N = len(prompts)
    input_ids = torch.full((N, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((N, P + T), dtype=torch.long)
    response_ids = torch.full((N, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((N, T), dtype=torch.float32)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = prompt.prompt_token_ids
        input_ids[i, P - len(ids) : P] = torch.tensor(ids)
        attention[i, P - len(ids) : P] = 1
        input_ids[i, P : P + len(response)] = torch.tensor(response, dtype=torch.long)
        attention[i, P : P + len(response)] = 1
        response_ids[i, : len(response)] = torch.tensor(response, dtype=torch.long)
        response_mask[i, : len(response)] = 1
    model_inputs: dict[str, torch.Tensor] = {}
    for key in sorted({k for p in prompts for k in p.model_inputs}):
        model_inputs[key] = torch.cat([p.model_inputs[key] for p in prompts if key in p.model_inputs])
    return SequenceBatch(input_ids, attention, response_ids, response_mask, model_inputs)
