"""The steady-state GPU memory budget of a run, per GPU, before anything is loaded (`mhpo-vl plan-memory`, and
`mhpo-vl train` on a GPU refuses a config that cannot fit).

Why a plan: vLLM takes ``gpu_memory_utilization x total`` and checks it only against the memory free when the engine
starts; Adam's state is created lazily (torch and DeepSpeed alike), so the start-up check passes and the first update
or ``wake_up`` runs out of memory. The plan counts what each GPU holds in the two phases of a step:

* rollout (engine awake): the trainer's persistent state (weights, fp32 master weights, Adam moments, gradient
  partitions and ZeRO buckets under DeepSpeed, the reference model) + vLLM's ``gpu_memory_utilization x total`` +
  the CUDA context + a margin;
* update (engine asleep with sleep mode; awake without it): the persistent state + gradients + activations of one
  micro-batch + the chunked lm_head's logits + the CUDA context + the margin.

Bytes per parameter (P: all parameters, T: the trainable ones, N: GPUs, 16-bit model):
    weights 2P (ZeRO-3: / N); fp32 master 4T (ZeRO >= 1: / N; plain torch: mhpo_vl.train.master_weights);
    Adam moments 8T (ZeRO >= 1: / N); gradients 2T (ZeRO >= 2: / N) + the fp32 gradient the optimiser steps with
    4T (ZeRO >= 1: / N); DeepSpeed's buckets 2 x (reduce + allgather bucket elements) for ZeRO 1-2,
    2 x (reduce + prefetch bucket elements) for ZeRO-3; a float32 model has no master copy (weights 4P, grads 4T).
Activations per decoder layer (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", Sec. 4.1: s b h (34 + 5 a s / h) bytes with 16-bit activations; the 5 a s / h attention-score term is 0
with SDPA / flash attention, which never store the scores): 34 x tokens x hidden bytes. With gradient checkpointing
each layer keeps only its input (2 x tokens x hidden bytes) and one layer's activations are rebuilt at a time.
The lm_head runs in chunks (trainer.logprob_chunk_size tokens): chunk x vocab x 4 bytes x 3 (fp32 logits, their
log-softmax and its gradient). vLLM inside its share: its weights (2P), ~2 GiB of its own activations / graphs /
sampler (an estimate), the rest KV cache at 2 x layers x kv_heads x head_dim x 2 bytes per token.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
CUDA_CONTEXT_GIB = 1.0  # one process (trainer + in-process engine share it); ~0.5-1 GiB on recent drivers
MARGIN_GIB = 2.0  # allocator fragmentation, NCCL buffers, temporaries the plan does not list
VLLM_OVERHEAD_GIB = 2.0  # vLLM's activation peak, CUDA graphs and sampler inside its gpu_memory_utilization share
ACTIVATION_BYTES_PER_TOKEN_HIDDEN = 34  # Korthikanti et al. 2022 (above), attention-score term dropped (SDPA)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model's config.json."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = True  # Qwen2 / Qwen2.5: biased q, k, v; Qwen3: none, but q_norm / k_norm
    qk_norm: bool = False
    vision: dict[str, int] = field(default_factory=dict)  # Qwen2.5-VL vision_config; empty: a text model
    # Qwen3-VL's tower (plain MLP, LayerNorms, a biased patch embedding, a learned position table, DeepStack mergers:
    # `vision` also holds num_position_embeddings and deepstack_layers) instead of Qwen2.5-VL's
    qwen3_vision: bool = False

    @property
    def language_params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        attn += 2 * self.head_dim if self.qk_norm else 0
        layer = attn + 3 * h * self.intermediate + 2 * h
        embed = self.vocab * h
        return self.layers * layer + h + embed + (0 if self.tied else embed)

    @property
    def vision_params(self) -> int:
        v = self.vision
        if not v:
            return 0
        d, i, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
        if self.qwen3_vision:
            block = (d * 3 * d + 3 * d) + (d * d + d) + (d * i + i) + (i * d + d) + 4 * d  # qkv, proj, fc1, fc2, 2 LN
            patch = v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * v["patch_size"] ** 2 * d + d
            merged = d * v.get("spatial_merge_size", 2) ** 2
            mlp = (merged * merged + merged) + (merged * out + out)
            return (v["depth"] * block + patch + v["num_position_embeddings"] * d + 2 * d + mlp
                    + v.get("deepstack_layers", 0) * (2 * merged + mlp))
        block = (d * 3 * d + 3 * d) + (d * d + d) + 2 * (d * i + i) + (i * d + d) + 2 * d  # qkv, proj, gate/up, down, 2 norms
        patch = v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * v["patch_size"] ** 2 * d
        merged = d * v.get("spatial_merge_size", 2) ** 2
        merger = d + (merged * merged + merged) + (merged * out + out)
        return v["depth"] * block + patch + merger

    @property
    def params(self) -> int:
        return self.language_params + self.vision_params

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16


def shape_from_config(name: str, cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a Hugging Face config.json (top-level text fields, or `text_config` as transformers >= 4.52
    writes them for Qwen2.5-VL)."""
    text = cfg.get("text_config") or cfg
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    model_type = str(text.get("model_type", cfg.get("model_type", "")))
    is_qwen3 = model_type.startswith("qwen3")
    return ModelShape(name=name, hidden=hidden, layers=int(text["num_hidden_layers"]), heads=heads,
                      kv_heads=int(text.get("num_key_value_heads", heads)),
                      head_dim=int(text.get("head_dim") or hidden // heads),
                      intermediate=int(text["intermediate_size"]), vocab=int(text["vocab_size"]),
                      tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                      qkv_bias=not is_qwen3, qk_norm=is_qwen3, qwen3_vision=is_qwen3 and bool(cfg.get("vision_config")),
                      vision={k: int(v) for k, v in (cfg.get("vision_config") or {}).items()
                              if isinstance(v, int) and not isinstance(v, bool)}
                      | ({"deepstack_layers": len((cfg.get("vision_config") or {}).get("deepstack_visual_indexes") or [])}
                         if cfg.get("vision_config") else {}))


_QWEN25_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "patch_size": 14,
                     "temporal_patch_size": 2, "in_channels": 3, "spatial_merge_size": 2}
# The shipped configs' models, from their public config.json on the Hugging Face Hub (Qwen/<name>/config.json), for
# planning offline without a download. Parameter counts as the Hub's safetensors metadata states them (model pages,
# "Model size"), which tests/test_memory_plan.py checks the arithmetic against: Qwen2.5-VL-7B-Instruct 8.29B,
# Qwen2.5-VL-3B-Instruct 3.75B, Qwen2.5-Math-7B-Instruct 7.62B, Qwen3-4B-Base 4.02B, Qwen3-VL-8B-Instruct 8.77B
# (8,767,123,696 as transformers 5.19 builds Qwen3VLForConditionalGeneration from that config on the meta device;
# the Hub figure itself was not checkable offline).
KNOWN_MODELS: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": ModelShape("Qwen/Qwen2.5-VL-7B-Instruct", 3584, 28, 28, 4, 128, 18944, 152064,
                                              tied=False, vision={**_QWEN25_VL_VISION, "out_hidden_size": 3584}),
    "Qwen/Qwen2.5-VL-3B-Instruct": ModelShape("Qwen/Qwen2.5-VL-3B-Instruct", 2048, 36, 16, 2, 128, 11008, 151936,
                                              tied=True, vision={**_QWEN25_VL_VISION, "out_hidden_size": 2048}),
    "Qwen/Qwen2.5-Math-7B-Instruct": ModelShape("Qwen/Qwen2.5-Math-7B-Instruct", 3584, 28, 28, 4, 128, 18944, 152064,
                                                tied=False),
    "Qwen/Qwen3-4B-Base": ModelShape("Qwen/Qwen3-4B-Base", 2560, 36, 32, 8, 128, 9728, 151936, tied=True,
                                     qkv_bias=False, qk_norm=True),
    "Qwen/Qwen3-VL-8B-Instruct": ModelShape("Qwen/Qwen3-VL-8B-Instruct", 4096, 36, 32, 8, 128, 12288, 151936,
                                            tied=False, qkv_bias=False, qk_norm=True, qwen3_vision=True,
                                            vision={"depth": 27, "hidden_size": 1152, "intermediate_size": 4304,
                                                    "patch_size": 16, "temporal_patch_size": 2, "in_channels": 3,
                                                    "spatial_merge_size": 2, "out_hidden_size": 4096,
                                                    "num_position_embeddings": 2304, "deepstack_layers": 3}),
}
PUBLISHED_PARAMS_B = {"Qwen/Qwen2.5-VL-7B-Instruct": 8.29, "Qwen/Qwen2.5-VL-3B-Instruct": 3.75,
                      "Qwen/Qwen2.5-Math-7B-Instruct": 7.62, "Qwen/Qwen3-4B-Base": 4.02,
                      "Qwen/Qwen3-VL-8B-Instruct": 8.77}


def find_model_shape(name_or_path: str) -> ModelShape | None:
    """The model's shape from a local folder's config.json, else the Hugging Face cache (offline), else the table of
    the shipped models; None when none of them knows it."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return shape_from_config(name_or_path, json.loads(local.read_text()))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(cached, str):
            return shape_from_config(name_or_path, json.loads(Path(cached).read_text()))
    except Exception:  # noqa: BLE001 - not a repo id, or no cache: fall back to the table
        pass
    return KNOWN_MODELS.get(name_or_path)


def parse_hardware(text: str) -> tuple[int, float] | None:
    """`NxMGiB` (e.g. 8x79GiB) -> (N, M); None for `cpu`."""
    if text.strip().lower() == "cpu":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*x\s*([\d.]+)\s*GiB\s*", text)
    if not m:
        raise ValueError(f"hardware {text!r}: expected NxMGiB (e.g. 8x79GiB) or cpu")
    return int(m.group(1)), float(m.group(2))


def hardware_of(config_file: str | Path) -> str | None:
    """The `# hardware: ...` line of a config file's header comment (what the config is meant to run on)."""
    for line in Path(config_file).read_text().splitlines():
        m = re.match(r"#\s*hardware:\s*(\S+)", line)
        if m:
            return m.group(1)
    return None


@dataclass(frozen=True)
class Inputs:
    """What the plan reads of a run config, flattened (so it can be built by hand in tests)."""

    gpus: int
    gpu_gib: float
    zero_stage: int  # 0: plain torch (no DeepSpeed)
    dtype: str
    freeze_vision: bool
    gradient_checkpointing: bool
    micro_batch_tokens: int
    logprob_chunk: int
    kl: bool
    gpu_memory_utilization: float
    sleep: bool
    max_model_len: int
    bucket_elements: float = 0.0  # DeepSpeed's reduce + allgather (or prefetch) bucket sizes, elements
    lora_rank: int | None = None  # model.lora.rank: only the adapters train (the default LM projections)


@dataclass
class Plan:
    shape: ModelShape
    inputs: Inputs
    rows: dict[str, float]  # GiB per GPU, by item
    rollout_gib: float
    update_gib: float
    update_gib_no_checkpointing: float
    kv_cache_gib: float
    kv_tokens: int
    suggested_utilization: float | None

    @property
    def peak_gib(self) -> float:
        return max(self.rollout_gib, self.update_gib)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.inputs.gpu_gib and self.kv_tokens >= self.inputs.max_model_len

    def lines(self) -> list[str]:
        i, s = self.inputs, self.shape
        out = [f"model {s.name}: {s.params / 1e9:.2f} B parameters ({s.language_params / 1e9:.2f} B language, "
               f"{s.vision_params / 1e9:.2f} B vision), trainable {trainable_params(s, i.freeze_vision, i.lora_rank) / 1e9:.2f} B",
               f"{i.gpus} GPU(s) x {i.gpu_gib:g} GiB, {'ZeRO-' + str(i.zero_stage) if i.zero_stage else 'plain torch'}, "
               f"{i.dtype}, micro-batch {i.micro_batch_tokens} tokens, gradient checkpointing "
               f"{'on' if i.gradient_checkpointing else 'off'}, gpu_memory_utilization {i.gpu_memory_utilization:g}, "
               f"sleep mode {'on' if i.sleep else 'off'}", "per GPU, GiB:"]
        out += [f"  {k:<44} {v:7.2f}" for k, v in self.rows.items()]
        out.append(f"  vLLM KV cache: {self.kv_cache_gib:.2f} GiB = {self.kv_tokens} tokens "
                   f"({self.kv_tokens / max(i.max_model_len, 1):.1f} sequences of max_model_len {i.max_model_len})")
        out.append(f"  rollout phase (engine awake) {self.rollout_gib:7.2f}; update phase {self.update_gib:7.2f} "
                   f"(without gradient checkpointing {self.update_gib_no_checkpointing:.2f}); of {i.gpu_gib:g}")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        suggestion = ("no gpu_memory_utilization fits: fewer bytes per GPU are needed (more GPUs, a higher ZeRO stage, "
                      "a smaller micro-batch token budget)" if self.suggested_utilization is None
                      else f"largest gpu_memory_utilization that fits: {self.suggested_utilization:.2f}")
        out.append(f"{verdict}: peak {self.peak_gib:.2f} GiB of {i.gpu_gib:g} GiB; {suggestion}")
        return out


def trainable_params(shape: ModelShape, freeze_vision: bool, lora_rank: int | None = None) -> int:
    """Full fine-tuning: the language model (and the vision tower unless frozen). LoRA (mhpo_vl.models.lora's default
    targets, every LM layer's q/k/v/o and gate/up/down projections): rank x (fan-in + fan-out) per projection."""
    if lora_rank is None:
        return shape.language_params if freeze_vision else shape.params
    h, q, kv, ffn = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + ffn) + (ffn + h)
    return lora_rank * per_layer * shape.layers


def plan(shape: ModelShape, i: Inputs) -> Plan:
    n, stage = i.gpus, i.zero_stage
    wbytes = 4 if i.dtype == "float32" else 2
    p, t = shape.params, trainable_params(shape, i.freeze_vision, i.lora_rank)
    g = GIB
    rows: dict[str, float] = {}
    rows["policy weights"] = wbytes * p / (n if stage == 3 else 1) / g
    rows["fp32 master weights"] = (0 if wbytes == 4 else 4 * t / (n if stage >= 1 else 1)) / g
    rows["Adam moments (fp32 m, v)"] = 8 * t / (n if stage >= 1 else 1) / g
    grads_model = wbytes * t / (n if stage >= 2 else 1) / g
    grads_fp32 = (0 if wbytes == 4 else 4 * t / (n if stage >= 1 else 1)) / g
    rows["gradients (model dtype)"] = grads_model
    rows["gradients (fp32, at the optimiser step)"] = grads_fp32
    rows["DeepSpeed buckets"] = 2 * i.bucket_elements / g if stage >= 1 else 0.0
    rows["reference model (kl_coef > 0)"] = wbytes * p / g if i.kl else 0.0
    layer_in = 2 * i.micro_batch_tokens * shape.hidden  # bytes: 16-bit layer input kept per layer
    full_layer = ACTIVATION_BYTES_PER_TOKEN_HIDDEN * i.micro_batch_tokens * shape.hidden
    act_ckpt = (shape.layers * layer_in + full_layer) / g
    act_full = shape.layers * full_layer / g
    logits = 3 * 4 * min(i.logprob_chunk, i.micro_batch_tokens) * shape.vocab / g
    rows["activations (checkpointing on)" if i.gradient_checkpointing else "activations (checkpointing off)"] = \
        act_ckpt if i.gradient_checkpointing else act_full
    rows["lm_head chunk logits"] = logits
    vllm = i.gpu_memory_utilization * i.gpu_gib
    rows["vLLM share (gpu_memory_utilization x total)"] = vllm
    rows["CUDA context"] = CUDA_CONTEXT_GIB
    rows["margin"] = MARGIN_GIB

    persistent = (rows["policy weights"] + rows["fp32 master weights"] + rows["Adam moments (fp32 m, v)"]
                  + rows["reference model (kl_coef > 0)"] + rows["DeepSpeed buckets"]
                  + (grads_model if stage >= 1 else 0.0))  # DeepSpeed keeps its gradient partitions allocated
    fixed = CUDA_CONTEXT_GIB + MARGIN_GIB
    engine_in_update = 0.0 if i.sleep else vllm
    grads_update = grads_model + grads_fp32 - (grads_model if stage >= 1 else 0.0)
    rollout = persistent + vllm + fixed
    update = persistent + grads_update + logits + engine_in_update + fixed
    update_ckpt = update + act_ckpt
    update_full = update + act_full
    vllm_weights = 2 * shape.params / g
    kv_gib = vllm - vllm_weights - VLLM_OVERHEAD_GIB
    kv_tokens = max(0, int(kv_gib * g // shape.kv_bytes_per_token))
    # the largest utilisation (0.05 steps) with which both phases fit and the KV cache holds one whole sequence
    suggested = None
    for k in range(19, 0, -1):
        u = k / 20
        share = u * i.gpu_gib
        kv_ok = (share - vllm_weights - VLLM_OVERHEAD_GIB) * g >= i.max_model_len * shape.kv_bytes_per_token
        up = (update_ckpt if i.gradient_checkpointing else update_full) - engine_in_update + (0 if i.sleep else share)
        if kv_ok and persistent + share + fixed <= i.gpu_gib and up <= i.gpu_gib:
            suggested = u
            break
    return Plan(shape, i, rows, rollout, update_ckpt if i.gradient_checkpointing else update_full, update_full,
                max(kv_gib, 0.0), kv_tokens, suggested)


def deepspeed_settings(path: str | None, hidden: int) -> tuple[int, float]:
    """(ZeRO stage, bucket elements) of a DeepSpeed JSON; (0, 0) without one. "auto" buckets resolve as
    mhpo_vl.distributed.Runtime resolves them (hidden^2, 0.9 hidden^2)."""
    if not path:
        return 0, 0.0
    zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
    stage = int(zero.get("stage", 0))

    def size(key: str, auto: float, default: float) -> float:
        v = zero.get(key, default)
        return auto if v == "auto" else float(v)

    if stage == 3:
        buckets = size("reduce_bucket_size", hidden * hidden, 5e8) + size("stage3_prefetch_bucket_size",
                                                                          0.9 * hidden * hidden, 5e7)
    else:
        buckets = size("reduce_bucket_size", hidden * hidden, 5e8) + size("allgather_bucket_size", 5e8, 5e8)
    return stage, buckets


def inputs_from_config(cfg: Any, shape: ModelShape, gpus: int, gpu_gib: float) -> Inputs:
    """Inputs from a RunConfig (mhpo_vl.config): the micro-batch token budget is trainer.max_tokens_per_micro_batch,
    else micro_batch_size x (max_prompt_length + rollout.max_tokens)."""
    t, r = cfg.trainer, cfg.rollout
    stage, buckets = deepspeed_settings(t.deepspeed, shape.hidden)
    tokens = t.max_tokens_per_micro_batch or t.micro_batch_size * (cfg.data.max_prompt_length + r.max_tokens)
    return Inputs(gpus=gpus, gpu_gib=gpu_gib, zero_stage=stage, dtype=cfg.model.dtype,
                  freeze_vision=cfg.model.freeze_vision_tower and bool(shape.vision),
                  gradient_checkpointing=cfg.model.gradient_checkpointing, micro_batch_tokens=int(tokens),
                  logprob_chunk=t.logprob_chunk_size, kl=cfg.algorithm.kl_coef > 0,
                  gpu_memory_utilization=r.gpu_memory_utilization,
                  sleep=r.enable_sleep_mode and r.backend == "vllm",
                  max_model_len=r.max_model_len or cfg.data.max_prompt_length + r.max_tokens, bucket_elements=buckets,
                  lora_rank=cfg.model.lora.rank if cfg.model.lora is not None else None)


def plan_for_config(cfg: Any, gpus: int, gpu_gib: float) -> Plan | None:
    """The plan of a RunConfig on `gpus` GPUs of `gpu_gib` GiB; None when the model's size is unknown offline."""
    shape = find_model_shape(cfg.model.name_or_path)
    if shape is None:
        return None
    return plan(shape, inputs_from_config(cfg, shape, gpus, gpu_gib))


def check_before_training(cfg: Any) -> list[str]:
    """What `mhpo-vl train` runs on a GPU before loading anything: the plan on this machine's GPUs (WORLD_SIZE
    processes, this device's total memory). Raises MemoryPlanError with the plan when it cannot fit; returns the
    lines to print otherwise (empty on CPU, or when the model's size is unknown offline)."""
    import torch

    from mhpo_vl.distributed import launcher_local_rank, launcher_world_size

    if cfg.trainer.device == "cpu" or not torch.cuda.is_available():
        return []
    gpus = launcher_world_size()
    total = torch.cuda.get_device_properties(launcher_local_rank()).total_memory / GIB
    result = plan_for_config(cfg, gpus, total)
    if result is None:
        return [f"memory plan: skipped ({cfg.model.name_or_path}: no config.json found offline)"]
    if not result.fits:
        raise MemoryPlanError("the config cannot fit this machine's GPUs (mhpo-vl plan-memory):\n"
                              + "\n".join(result.lines()))
    return [f"memory plan: peak {result.peak_gib:.1f} of {total:.1f} GiB per GPU (mhpo-vl plan-memory for the budget)"]


class MemoryPlanError(ValueError):
    """A config whose steady-state memory per GPU exceeds the GPU's (a user error: one message, exit 2)."""
