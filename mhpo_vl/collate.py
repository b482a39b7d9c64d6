"""Vision-aware prompt encoding and batch collation.

``PromptEncoder.encode(samples)`` turns Samples into EncodedPrompts: chat messages with one image slot per image,
images decoded safely and resized by ``qwen_vl_utils.process_vision_info`` to the processor's min/max pixels, the
chat-templated text (one ``<|image_pad|>`` per image: what vLLM takes), and the processor's token ids (pads expanded:
what the trainer's forward takes) plus its other outputs as an opaque ``model_inputs`` dict.
``collate_sequences(prompts, responses, pad_token_id)`` builds the SequenceBatch the trainer runs forward on.

``PromptEncoder.prompt_length(sample)`` gives the same token count without decoding pixels, so a whole dataset is
measured at load time (``mhpo_vl.train.run_data``).

A text-only model and tokenizer go through the same code with ``use_images=False``. A prompt over
``max_prompt_length`` is a :class:`PromptTooLongError`: cutting it would cut through image tokens ("Image features
and image tokens do not match") or through the question, so we stop and name the sample instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mhpo_vl.images import DataError, check_image_header, describe_image, open_image
from mhpo_vl.prompts import PromptTemplate
from mhpo_vl.types import EncodedPrompt, Sample, SequenceBatch

# Processor outputs that are not model inputs: the ids and mask are rebuilt by collate_sequences.
_NOT_MODEL_INPUTS = ("input_ids", "attention_mask")


class PromptTooLongError(ValueError):
    def __init__(self, sample: Sample, length: int, limit: int, *, more: str = "",
                 remedy: str = "raise max_prompt_length, lower max_pixels, or drop the sample"):
        self.sample_id, self.length, self.limit = sample.id, length, limit
        images = f" with {len(sample.images)} image(s)" if sample.images else ""
        super().__init__(
            f"prompt of sample {sample.source}/{sample.id}{images} is {length} tokens, over max_prompt_length={limit}"
            f"{more}; {remedy} (prompts are never truncated)"
        )


class PromptEncoder:
    def __init__(
        self,
        processor_or_tokenizer: Any,
        template: PromptTemplate,
        *,
        max_prompt_length: int,
        use_images: bool = True,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system_prompt: str | None = None,
        drop_images: bool = False,
    ):
        """``drop_images``: with ``use_images=False``, encode samples that have images as text only. Without it such a
        sample is an error, so a vision dataset never silently loses its images."""
        self.processor = processor_or_tokenizer
        self.template = template
        self.max_prompt_length = max_prompt_length
        self.system_prompt = system_prompt
        self.drop_images = drop_images
        self.image_processor = getattr(processor_or_tokenizer, "image_processor", None)
        self.tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        if use_images and self.image_processor is None:
            raise ValueError(
                f"use_images=True needs a processor with an image processor; got {type(processor_or_tokenizer).__name__}. "
                "Pass use_images=False for a text-only model."
            )
        self.use_images = use_images
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        if use_images:
            default_min, default_max = _processor_pixel_range(self.image_processor)
            self.min_pixels = min_pixels if min_pixels is not None else default_min
            self.max_pixels = max_pixels if max_pixels is not None else default_max
            if self.min_pixels > self.max_pixels:
                raise ValueError(f"min_pixels={self.min_pixels} > max_pixels={self.max_pixels}")
            self.patch_size = int(getattr(self.image_processor, "patch_size", 14))
            image_token = getattr(processor_or_tokenizer, "image_token", "<|image_pad|>")
            self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)

    def encode(self, samples: Sequence[Sample]) -> list[EncodedPrompt]:
        return [self.encode_one(sample) for sample in samples]

    def encode_one(self, sample: Sample) -> EncodedPrompt:
        text = self.template.render(sample)
        self._check_images_allowed(sample)
        if self.use_images and sample.images:
            return self._encode_with_images(sample, text)
        return self._encode_text(sample, text)

    def prompt_length(self, sample: Sample) -> int:
        """The number of tokens ``encode_one(sample)`` gives, without decoding or resizing pixels: each image's
        visual tokens follow from its header size through the same ``smart_resize`` qwen-vl-utils applies, so a
        whole dataset is checked in seconds at load time (tests check it equals ``encode_one``)."""
        text = self.template.render(sample)
        self._check_images_allowed(sample)
        if not (self.use_images and sample.images):
            return len(self._encode_text(sample, text, check=False).prompt_token_ids)
        from qwen_vl_utils.vision_process import SPATIAL_MERGE_SIZE, smart_resize

        factor = self.patch_size * SPATIAL_MERGE_SIZE  # what process_vision_info resizes to
        merge = int(getattr(self.image_processor, "merge_size", SPATIAL_MERGE_SIZE))
        visual = 0
        for image in sample.images:
            width, height = check_image_header(image, file=image if isinstance(image, str) else None,
                                               row=sample.id, field="images")
            try:
                h, w = smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
            except ValueError as exc:  # e.g. an aspect ratio over 200: encode_one would fail on it too
                raise DataError(f"image {describe_image(image)} ({width}x{height}): {exc}", file=sample.source,
                                row=sample.id, field="images") from None
            visual += (h // self.patch_size) * (w // self.patch_size) // (merge * merge)
        slots = [{"type": "image"} for _ in sample.images]
        prompt_text = self.processor.apply_chat_template(self._messages(slots + [{"type": "text", "text": text}]),
                                                         add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        pads = sum(1 for t in ids if t == self.image_token_id)
        if pads != len(sample.images):
            raise ValueError(f"sample {sample.source}/{sample.id}: the chat template wrote {pads} image pad tokens "
                             f"for {len(sample.images)} image(s)")
        return len(ids) - pads + visual  # each pad becomes that image's visual tokens

    def _check_images_allowed(self, sample: Sample) -> None:
        if sample.images and not self.use_images and not self.drop_images:
            raise DataError(
                f"sample {sample.source}/{sample.id} has {len(sample.images)} image(s) but use_images=False; "
                "pass drop_images=True to encode it as text only"
            )

    def _messages(self, content: Any) -> list[dict]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return messages + [{"role": "user", "content": content}]

    def _encode_text(self, sample: Sample, text: str, *, check: bool = True) -> EncodedPrompt:
        prompt_text = self.processor.apply_chat_template(self._messages(text), add_generation_prompt=True, tokenize=False)
        # The chat template already wrote the special tokens; the tokenizer must not add a BOS of its own.
        ids = list(self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        if check:
            self._check_length(sample, len(ids))
        return EncodedPrompt(sample=sample, prompt_text=prompt_text, prompt_token_ids=ids)

    def _encode_with_images(self, sample: Sample, text: str) -> EncodedPrompt:
        from qwen_vl_utils import process_vision_info  # imports torch/torchvision: only when encoding images

        decoded = [
            open_image(image, file=image if isinstance(image, str) else None, row=sample.id, field="images")
            for image in sample.images
        ]
        slots = [{"type": "image", "image": image, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels}
                 for image in decoded]
        messages = self._messages(slots + [{"type": "text", "text": text}])
        resized, _ = process_vision_info(messages, image_patch_size=self.patch_size)
        prompt_text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # Images are already at the processor's pixel budget and a multiple of patch*merge: resizing again could only
        # make the trainer's pixels differ from what vLLM is given.
        encoded = self.processor(text=[prompt_text], images=resized, return_tensors="pt", do_resize=False)
        ids = encoded["input_ids"][0].tolist()
        self._check_length(sample, len(ids))
        model_inputs = {key: value for key, value in encoded.items() if key not in _NOT_MODEL_INPUTS}
        return EncodedPrompt(sample=sample, prompt_text=prompt_text, prompt_token_ids=ids, images=list(resized),
                             model_inputs=model_inputs)

    def _check_length(self, sample: Sample, length: int) -> None:
        if length > self.max_prompt_length:
            raise PromptTooLongError(sample, length, self.max_prompt_length)


def check_pixels_match_processor(image_processor: Any, min_pixels: int | None, max_pixels: int | None,
                                 model: str) -> None:
    """vLLM resizes each image again with the model's own image-processor limits (its preprocessor_config.json).
    An image the encoder resized outside those limits comes out at another size there, and the prompt's token ids
    differ ("prompt token ids differ (153 vs 483)"): refuse such limits before the engine starts."""
    low, high = _processor_pixel_range(image_processor)
    min_pixels = low if min_pixels is None else min_pixels
    max_pixels = high if max_pixels is None else max_pixels
    if min_pixels < low or max_pixels > high:
        raise ValueError(
            f"image pixel limits {min_pixels}..{max_pixels} are outside {model}'s own image processor limits "
            f"{low}..{high} (preprocessor_config.json), which vLLM applies again: images would be resized twice and "
            f"prompts would differ between the encoder and vLLM. Pass --min-pixels/--max-pixels within {low}..{high} "
            "(for a checkpoint of a training run: the run's data.min_pixels/max_pixels)")


def _processor_pixel_range(image_processor: Any) -> tuple[int, int]:
    """The image processor's own (min_pixels, max_pixels), so vLLM and the trainer resize identically by default."""
    size = getattr(image_processor, "size", None) or {}
    get = size.get if hasattr(size, "get") else (lambda key, default=None: getattr(size, key, default))
    low = getattr(image_processor, "min_pixels", None) or get("min_pixels") or get("shortest_edge")
    high = getattr(image_processor, "max_pixels", None) or get("max_pixels") or get("longest_edge")
    if low is None or high is None:
        raise ValueError(f"cannot read min/max pixels from {type(image_processor).__name__}; pass min_pixels and max_pixels")
    return int(low), int(high)


def collate_sequences(prompts: Sequence[EncodedPrompt], responses: Sequence[Sequence[int]], pad_token_id: int) -> SequenceBatch:
    """N prompt+response rows: prompts left-padded to P, responses right-padded to T (T >= 1).

    ``model_inputs`` are concatenated along dim 0 in row order (pixel_values, image_grid_thw, ...), except outputs
    aligned with the prompt's tokens (shape ``[1, prompt_len]``, e.g. ``mm_token_type_ids``), which are padded with 0
    to ``[N, P + T]`` like the ids. Rows without images simply contribute nothing to the image tensors.
    """
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("collate_sequences needs at least one row")
    N = len(prompts)
    P = max(len(p.prompt_token_ids) for p in prompts)
    T = max(1, max(len(r) for r in responses))
    input_ids_NL = torch.full((N, P + T), pad_token_id, dtype=torch.long)
    attention_mask_NL = torch.zeros((N, P + T), dtype=torch.long)
    response_ids_NT = torch.full((N, T), pad_token_id, dtype=torch.long)
    response_mask_NT = torch.zeros((N, T), dtype=torch.float32)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = prompt.prompt_token_ids
        input_ids_NL[row, P - len(ids): P] = torch.tensor(ids, dtype=torch.long)
        attention_mask_NL[row, P - len(ids): P] = 1
        if response:
            response_t = torch.tensor(list(response), dtype=torch.long)
            input_ids_NL[row, P: P + len(response)] = response_t
            attention_mask_NL[row, P: P + len(response)] = 1
            response_ids_NT[row, : len(response)] = response_t
            response_mask_NT[row, : len(response)] = 1.0
    return SequenceBatch(input_ids_NL, attention_mask_NL, response_ids_NT, response_mask_NT,
                         _collate_model_inputs(prompts, P, T))


def _collate_model_inputs(prompts: Sequence[EncodedPrompt], P: int, T: int) -> dict[str, Any]:
    import torch

    keys = sorted({key for prompt in prompts for key in prompt.model_inputs})
    merged: dict[str, Any] = {}
    for key in keys:
        values = [(prompt, prompt.model_inputs[key]) for prompt in prompts if key in prompt.model_inputs]
        token_aligned = all(torch.is_tensor(v) and tuple(v.shape) == (1, len(p.prompt_token_ids)) for p, v in values)
        if token_aligned:
            # Rows without this output (text-only prompts in a mixed batch) keep 0, the text token type.
            padded = torch.zeros((len(prompts), P + T), dtype=values[0][1].dtype)
            for row, prompt in enumerate(prompts):
                value = prompt.model_inputs.get(key)
                if value is not None:
                    padded[row, P - value.shape[1]: P] = value[0]
            merged[key] = padded
        elif all(torch.is_tensor(v) for _, v in values):
            merged[key] = torch.cat([v for _, v in values], dim=0)
        else:
            raise TypeError(f"model input {key!r} is not a tensor in every prompt; cannot concatenate it")
    return merged
