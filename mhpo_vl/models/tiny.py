"""Tiny random-weight models of the real architectures, built offline for tests and CPU demos.

``build_tiny_vl_model`` writes a Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``),
``build_tiny_text_model`` a Qwen2 causal LM, ``build_tiny_qwen3_vl_model`` a Qwen3-VL (same sizes and vocabularies;
what it reproduces of Qwen3-VL-8B-Instruct: the section "Qwen3-VL" at the end of this file). The tokenizer is chosen by the ``vocab`` option:
- ``"qwen"`` (default): the real Qwen2.5-VL tokenizer (151,665 entries, see mhpo_vl.models.qwen_tokenizer), embedding rows
  151,936 as in Qwen2.5-VL-3B. Real token counts, real chat-template tokens, spare embedding rows like the real model.
- ``"small"``: a ~2k-token Qwen2-style byte-level BPE trained here on a corpus generated in code (math, geometry,
  LaTeX, English filler), so math answers tokenize sensibly; embedding rows = its size. The lm_head over 151,936 rows
  dominates a tiny model's cost, so the CPU demo and most end-to-end tests use this one (README: measured costs).
The folders load with transformers' Auto classes (offline) and with vLLM. A build is deterministic: the same
arguments give byte-identical files.

Size limits that are not obvious: vLLM's CPU attention only supports head_dim in {32, 64, 80, 96, ...}, so
``hidden_size / num_attention_heads`` must be one of those; Qwen2.5-VL's M-RoPE sections must sum to head_dim / 2.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mhpo_vl.models.build_cache import build_once
from mhpo_vl.models.qwen3_chat import QWEN3_EXTRA_ADDED_TOKENS, QWEN3_VL_CHAT_TEMPLATE
from mhpo_vl.models.qwen_chat import (
    QWEN_PRETOKENIZE_REGEX,
    QWEN_SPECIAL_TOKENS,
    QWEN_THINK_TOKENS,
    QWEN_VL_CHAT_TEMPLATE,
)

__all__ = ["QWEN_PRETOKENIZE_REGEX", "QWEN_SPECIAL_TOKENS", "QWEN_THINK_TOKENS", "QWEN_VL_CHAT_TEMPLATE", "TinySizes",
           "build_once", "build_tiny_qwen3_vl_model", "build_tiny_text_model", "build_tiny_vl_model", "builder_version",
           "cached_tiny_model", "qwen3_vl_processor", "save_vl_processor", "vl_processor"]

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2 * 4
MAX_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2 * 16

VOCABS = ("qwen", "small")
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass(frozen=True)
class TinySizes:
    """Architecture sizes; any field can be overridden through ``build_tiny_*_model(..., **size_overrides)``."""

    vocab: str = "qwen"  # "qwen": the real Qwen2.5-VL tokenizer; "small": a BPE trained here (vocab_target)
    vocab_target: int = 2048  # vocab="small": merges are learned until the vocabulary (bytes + merges) reaches this
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 1_000_000.0
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_num_heads: int = 2
    vision_intermediate_size: int = 128

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {VOCABS}, got {self.vocab!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim}; vLLM's CPU attention supports only "
                f"{VLLM_CPU_HEAD_DIMS}"
            )
        if self.vision_hidden_size % self.vision_num_heads or (self.vision_hidden_size // self.vision_num_heads) % 4:
            raise ValueError(
                f"vision_hidden_size {self.vision_hidden_size} / vision_num_heads {self.vision_num_heads} must be a multiple of 4"
            )

    def mrope_section(self) -> list[int]:
        """Temporal/height/width split of head_dim/2 rotary frequencies in Qwen's 16:24:24 proportions."""
        half = self.head_dim // 2
        temporal = half // 4
        height = (half - temporal) // 2
        return [temporal, height, half - temporal - height]


def _sizes(overrides: dict[str, Any]) -> TinySizes:
    known = {f.name for f in fields(TinySizes)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown tiny-model size override(s) {unknown}; valid: {sorted(known)}")
    sizes = TinySizes(**overrides)
    sizes.validate()
    if "vocab_target" in overrides and sizes.vocab != "small":
        raise ValueError(f"vocab_target applies to vocab='small' only; this model uses vocab={sizes.vocab!r}")
    return sizes


# ---------------------------------------------------------------- tokenizer corpus


_WORDS = (
    "the a an of and or to in on at is are be was were find what which how many much if then so thus therefore "
    "let given since because we have has get gives given answer question solve compute calculate determine value "
    "measure length area perimeter volume radius diameter circumference angle angles triangle triangles right "
    "isosceles equilateral scalene acute obtuse square rectangle parallelogram rhombus trapezoid polygon pentagon "
    "hexagon circle arc chord tangent secant sector segment line lines parallel perpendicular bisector median "
    "altitude height base side sides vertex vertices diagonal point points midpoint center inscribed circumscribed "
    "similar congruent ratio proportion sum difference product quotient equal equals degrees degree units unit cm "
    "meters inches feet figure shown below above image diagram graph chart table plot axis x y coordinate slope "
    "intercept function equation inequality solution solutions root roots integer number numbers real rational "
    "fraction decimal percent probability mean median mode average total each every other first second third "
    "step steps think reasoning final choose option options correct following true false not no yes more less "
    "greater smaller largest smallest maximum minimum sine cosine tangent sin cos tan log exp sqrt pi theta alpha "
    "beta gamma age years old price cost dollars apples students people time speed distance hours minutes"
).split()

_TEMPLATES = (
    "Find the measure of angle {A}{B}{C}. The answer is \\boxed{{{n}}}.",
    "In triangle {A}{B}{C}, {A}{B} = {n} and {B}{C} = {m}. Find {A}{C}.",
    "<think>\nThe angles of a triangle sum to 180 degrees, so x = 180 - {n} - {m} = {d}.\n</think>\nThe answer is \\boxed{{{d}}}.",
    "<think>\nArea = \\frac{{1}}{{2}} \\times {n} \\times {m} = {p}.\n</think>\n\\boxed{{{p}}}",
    "Solve for x: {n}x + {m} = {s}. So x = \\frac{{{s} - {m}}}{{{n}}}.",
    "Choices: (A) {n} (B) {m} (C) {d} (D) {p}. Answer: \\boxed{{{L}}}",
    "$\\angle {A}{B}{C} = {n}^\\circ$, $m \\angle {C} = {m}^{{\\circ}}$, $\\sqrt{{{p}}}$, ${n}\\pi$, $\\frac{{{n}}}{{{m}}}$",
    "The radius of circle {A} is {n} cm, so the circumference is 2\\pi r = {q}\\pi cm.",
    "Hint: Please answer the question and provide the final answer at the end. Question: {w} {w} {w} {w}?",
    "{w} {w} {w} {w} {w} {w}, {w} {w} {w}. {W} {w} {w} {n}.",
    "Final answer: {n}.{m}",
)


def tokenizer_training_corpus(num_lines: int = 6000) -> list[str]:
    """Deterministic text the BPE merges are learned from (same lines on every call)."""
    rng = random.Random(20251123)
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    lines = []
    for _ in range(num_lines):
        n, m = rng.randint(1, 179), rng.randint(1, 99)
        values = {
            "A": rng.choice(letters),
            "B": rng.choice(letters),
            "C": rng.choice(letters),
            "n": n,
            "m": m,
            "d": max(180 - n - m, 1),
            "p": n * m,
            "q": 2 * n,
            "s": n * rng.randint(1, 9) + m,
            "L": rng.choice("ABCD"),
        }
        template = rng.choice(_TEMPLATES)
        # {w}/{W} draw a fresh word at each occurrence.
        parts = template.split("{w}")
        template = "".join(p + (rng.choice(_WORDS) if i < len(parts) - 1 else "") for i, p in enumerate(parts))
        template = template.replace("{W}", rng.choice(_WORDS).capitalize())
        lines.append(template.format(**values))
    return lines


def build_small_tokenizer(vocab_target: int = 2048):
    """A Qwen2Tokenizer (byte-level BPE with Qwen's split regex and special tokens) trained on the code corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(tokenizer_training_corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]

    tokenizer = Qwen2Tokenizer(
        vocab=dict(trained["vocab"]),
        # transformers accepts merge pairs as tuples and an absent unk token; its annotations say list[str] / str.
        merges=merges,  # type: ignore[arg-type]
        unk_token=None,  # type: ignore[arg-type]
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_THINK_TOKENS])
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_tokenizer(sizes: TinySizes):
    """The tokenizer ``sizes.vocab`` names, and the number of embedding rows the model gets for it."""
    if sizes.vocab == "qwen":
        from mhpo_vl.models.qwen_tokenizer import QWEN_VL_3B_VOCAB_ROWS, load_qwen_tokenizer

        # Padded like Qwen2.5-VL-3B (151,665 tokens in 151,936 rows): the 271 spare ids exist in the model and in
        # vLLM but not in the tokenizer, as with the real checkpoints. Random weights sample them about 0.2% of the
        # time; they decode to nothing.
        return load_qwen_tokenizer(), QWEN_VL_3B_VOCAB_ROWS
    # The small BPE: exactly its size, so the random model never samples an id the tokenizer lacks.
    tokenizer = build_small_tokenizer(sizes.vocab_target)
    return tokenizer, len(tokenizer)


def _write_provenance(out_dir: Path, kind: str, seed: int, sizes: TinySizes) -> None:
    record = {"kind": kind, "seed": seed, "sizes": asdict(sizes), "head_dim": sizes.head_dim}
    if kind == "vl":
        record["mrope_section"] = sizes.mrope_section()
        record["image_processor"] = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": PATCH_SIZE}
    (out_dir / "tiny_model.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _seeded_init(model_cls, config, seed: int):
    import torch

    torch.manual_seed(seed)
    model = model_cls(config)
    return model.to(torch.float32).eval()


def vl_processor(tokenizer, *, min_pixels: int, max_pixels: int):
    """A Qwen2.5-VL processor: image/video processors with these pixel limits, the tokenizer, the chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixel_kwargs = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=PATCH_SIZE,
                        temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixel_kwargs), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**pixel_kwargs),
                               chat_template=QWEN_VL_CHAT_TEMPLATE)


def save_vl_processor(out_dir: Path, tokenizer, *, min_pixels: int, max_pixels: int) -> None:
    """Write :func:`vl_processor` into ``out_dir``: vLLM and the trainer both read the pixel limits from it."""
    vl_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(out_dir)


def build_tiny_vl_model(out_dir: str | Path, seed: int = 0, **size_overrides: Any) -> Path:
    """Write a random-weight Qwen2.5-VL (model, tokenizer, image/video processor, chat template) to ``out_dir``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    sizes = _sizes(size_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_rows = build_tokenizer(sizes)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_rows,
            hidden_size=sizes.hidden_size,
            intermediate_size=sizes.intermediate_size,
            num_hidden_layers=sizes.num_hidden_layers,
            num_attention_heads=sizes.num_attention_heads,
            num_key_value_heads=sizes.num_key_value_heads,
            max_position_embeddings=sizes.max_position_embeddings,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": sizes.rope_theta,
                "mrope_section": sizes.mrope_section(),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            max_window_layers=sizes.num_hidden_layers,
        ),
        vision_config=dict(
            depth=sizes.vision_depth,
            hidden_size=sizes.vision_hidden_size,
            intermediate_size=sizes.vision_intermediate_size,
            num_heads=sizes.vision_num_heads,
            out_hidden_size=sizes.hidden_size,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            window_size=PATCH_SIZE * MERGE_SIZE * 2,
            fullatt_block_indexes=[sizes.vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = _seeded_init(Qwen2_5_VLForConditionalGeneration, config, seed)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)

    save_vl_processor(out_dir, tokenizer, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    _write_provenance(out_dir, "vl", seed, sizes)
    return out_dir


def build_tiny_text_model(out_dir: str | Path, seed: int = 0, **size_overrides: Any) -> Path:
    """Write a random-weight Qwen2 causal LM with the same tokenizer and chat template to ``out_dir``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = _sizes(size_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_rows = build_tokenizer(sizes)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=vocab_rows,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta},
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        max_window_layers=sizes.num_hidden_layers,
        tie_word_embeddings=False,
    )
    model = _seeded_init(Qwen2ForCausalLM, config, seed)
    model.generation_config.eos_token_id = [eos_id, pad_id]
    model.generation_config.pad_token_id = pad_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_provenance(out_dir, "text", seed, sizes)
    return out_dir


# ---------------------------------------------------------------- Qwen3-VL

# A tiny random-weight Qwen3-VL (``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor``).
#
# What is reproduced from Qwen/Qwen3-VL-8B-Instruct (its config.json, preprocessor_config.json, chat_template.json):
# - the architecture class and config layout (``model_type: qwen3_vl``: a Qwen3 text model with q/k RMSNorm and an
#   explicit ``head_dim``, interleaved M-RoPE whose sections keep the 24:20:20 (t:h:w) proportions of [24, 20, 20],
#   a ViT with learned position embeddings (``num_position_embeddings`` 2304, a 48x48 grid interpolated per image),
#   patch 16, spatial merge 2, temporal patch 2, and DeepStack mergers feeding visual features into the first LM
#   layers; ``tie_word_embeddings`` false as in the 8B), the special-token ids and generation eos/pad ids;
# - the tokenizer (``vocab="qwen"``): Qwen2.5-VL's (rebuilt offline from the BPE ranks, mhpo_vl.models.qwen_tokenizer)
#   plus Qwen3's four added tokens (151,669 entries), 151,936 embedding rows as in the 8B;
# - the chat template, byte for byte (mhpo_vl.models.qwen3_chat): no default system prompt;
# - the image processor's patch 16 / merge 2 and mean = std = 0.5 normalisation (Qwen2.5-VL uses CLIP's).
# Not reproduced: the weights (random), the sizes (tiny; ``TinySizes``), the pixel limits (4..16 visual tokens per
# image, like the Qwen2.5-VL tiny model, where the 8B allows up to 16,384), rope_theta (TinySizes' 1e6 vs 5e6) and
# ``max_position_embeddings`` (4,096 vs 262,144). Whether the hub template has changed since is not checkable offline.
# ``vocab="small"`` gives the small BPE (mhpo_vl.models.tiny) with this chat template instead.

QWEN3_VL_PATCH_SIZE = 16
QWEN3_VL_MIN_PIXELS = (QWEN3_VL_PATCH_SIZE * MERGE_SIZE) ** 2 * 4
QWEN3_VL_MAX_PIXELS = (QWEN3_VL_PATCH_SIZE * MERGE_SIZE) ** 2 * 16
QWEN3_VL_NUM_POSITION_EMBEDDINGS = 2304  # 48 x 48, as in Qwen3-VL-8B
QWEN3_VL_IMAGE_MEAN_STD = [0.5, 0.5, 0.5]


def qwen3_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's [24, 20, 20] for head_dim 128, scaled: h and w get 20/64 of head_dim/2 each, t the rest."""
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def qwen3_tokenizer(sizes: TinySizes):
    """The tokenizer ``sizes.vocab`` names with Qwen3-VL's added tokens and chat template, and the embedding rows."""
    from transformers import AddedToken

    tokenizer, rows = build_tokenizer(sizes)
    if sizes.vocab == "qwen":
        # Qwen3 appends these after Qwen2.5's 22 added tokens (the small BPE already holds <think>/</think>).
        tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_EXTRA_ADDED_TOKENS])
    else:
        rows = len(tokenizer)
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    return tokenizer, rows


def qwen3_vl_processor(tokenizer, *, min_pixels: int, max_pixels: int):
    """A Qwen3-VL processor: image/video processors (patch 16, merge 2, mean = std = 0.5) with these pixel limits."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    pixel_kwargs: dict[str, Any] = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=QWEN3_VL_PATCH_SIZE,
                                        temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE,
                                        image_mean=QWEN3_VL_IMAGE_MEAN_STD, image_std=QWEN3_VL_IMAGE_MEAN_STD)
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**pixel_kwargs), tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(**pixel_kwargs), chat_template=QWEN3_VL_CHAT_TEMPLATE)


def build_tiny_qwen3_vl_model(out_dir: str | Path, seed: int = 0, **size_overrides: Any) -> Path:
    """Write a random-weight Qwen3-VL (model, tokenizer, image/video processor, chat template) to ``out_dir``."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    sizes = _sizes(size_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_rows = qwen3_tokenizer(sizes)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    mrope = qwen3_mrope_section(sizes.head_dim)
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_rows,
            hidden_size=sizes.hidden_size,
            intermediate_size=sizes.intermediate_size,
            num_hidden_layers=sizes.num_hidden_layers,
            num_attention_heads=sizes.num_attention_heads,
            num_key_value_heads=sizes.num_key_value_heads,
            head_dim=sizes.head_dim,
            max_position_embeddings=sizes.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta, "mrope_section": mrope,
                             "mrope_interleaved": True},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=sizes.vision_depth,
            hidden_size=sizes.vision_hidden_size,
            intermediate_size=sizes.vision_intermediate_size,
            num_heads=sizes.vision_num_heads,
            out_hidden_size=sizes.hidden_size,
            patch_size=QWEN3_VL_PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=TEMPORAL_PATCH_SIZE,
            num_position_embeddings=QWEN3_VL_NUM_POSITION_EMBEDDINGS,
            # The 8B feeds 3 of its 27 ViT layers' features to LM layers 0-2; here the first ViT layer's to layer 0.
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = _seeded_init(Qwen3VLForConditionalGeneration, config, seed)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    qwen3_vl_processor(tokenizer, min_pixels=QWEN3_VL_MIN_PIXELS, max_pixels=QWEN3_VL_MAX_PIXELS).save_pretrained(out_dir)
    record = {"kind": "qwen3_vl", "seed": seed, "sizes": asdict(sizes), "head_dim": sizes.head_dim,
              "mrope_section": mrope, "image_processor": {"min_pixels": QWEN3_VL_MIN_PIXELS,
                                                          "max_pixels": QWEN3_VL_MAX_PIXELS,
                                                          "patch_size": QWEN3_VL_PATCH_SIZE}}
    (out_dir / "tiny_model.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir

def builder_version() -> str:
    """A hash of this file and the Qwen tokenizer builder: a changed builder never reuses models cached by an older one."""
    import hashlib

    here = Path(__file__).parent
    files = ("tiny.py", "qwen_chat.py", "build_cache.py", "qwen_tokenizer.py", "qwen_shapes.py", "qwen3_chat.py")
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in files)).hexdigest()[:16]


def cached_tiny_model(kind: str, cache_root: str | Path, **size_overrides: Any) -> Path:
    """The folder of a tiny model ("vl": Qwen2.5-VL, "text": Qwen2, "qwen3_vl": Qwen3-VL) with these sizes, built
    once under ``<cache_root>/<builder_version()>/`` (see build_once; concurrent builds are byte-identical)."""
    builders = {"vl": build_tiny_vl_model, "text": build_tiny_text_model, "qwen3_vl": build_tiny_qwen3_vl_model}
    if kind not in builders:
        raise ValueError(f"tiny model kind must be one of {sorted(builders)}, got {kind!r}")
    tag = "_".join(f"{k}{v}" for k, v in sorted(size_overrides.items())) or "default"
    return build_once(Path(cache_root) / builder_version() / f"{kind}_{tag}",
                      lambda folder: builders[kind](folder, seed=0, **size_overrides))
