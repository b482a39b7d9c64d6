"""LoRA on the language model (peft): wrap, merge for the sampler, save and load the adapter, export merged.

How a LoRA run works (config `model.lora`, mhpo_vl.config.schema.LoraConfig):
- `add_lora` injects peft LoRA layers into the policy in place (`peft.inject_adapter_in_model`): the model keeps
  its transformers class, so `per_token_logprobs`, DeepSpeed and `save_pretrained` see the same object as in full
  fine-tuning. Every base weight (language model, vision tower, embeddings, lm_head) is frozen; only the adapter
  matrices (`...<proj>.lora_A.default.weight`, `...lora_B.default.weight`) require grad, so only they reach the
  optimiser. The default targets are the language model's attention and MLP projections, never the vision tower
  (its blocks have gate/up/down_proj too: a name-only target list would wrap them); a target that wraps a
  vision-tower module is an error.
- The sampler gets MERGED weights (`merged_lora_weights`): for each wrapped linear, W + (alpha / r) B A under the
  base weight's name (`...q_proj.weight`), so vLLM's `load_weights` sees the base model's names and the engine runs
  at the base model's speed. Why not vLLM's own LoRA support: it needs `enable_lora` / `max_lora_rank` at engine
  start, takes adapters only from files (EasyR1 monkeypatches vLLM's private `WorkerLoRAManager._load_adapter` to
  pass tensors: verl/utils/vllm_utils.py), and runs the LoRA matmuls for every generated token; the merged sync is
  the existing reload path with 7 tensors per layer instead of the whole LM (measured: docs/benchmarks.md).
- A checkpoint holds the adapter (`adapter_model.safetensors` + `adapter_config.json`, the files peft's
  `PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads), the processor and the trainer state;
  the base weights are the run's `model.name_or_path` (`base_model_name_or_path` in adapter_config.json).
- `mhpo-vl export CHECKPOINT OUT` (`export_merged`) writes the merged model as a plain Hugging Face folder.

peft is imported only inside the functions that need it, so `import mhpo_vl` stays light.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.config.schema import LoraConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_NAME = "default"  # peft's adapter name inside the model
_PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before each name in the file
_LORA_PARAM = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?:" + ADAPTER_NAME + r"\.)?weight$")


class LoraError(ValueError):
    """A LoRA setting or checkpoint that cannot be used (named, with what to do)."""


def has_lora(model: Any) -> bool:
    """Whether `model` carries injected LoRA layers (`add_lora`)."""
    return bool(getattr(model, "peft_config", None))


def is_adapter_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def peft_config_for(settings: LoraConfig, base_model_name_or_path: str | None = None) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    kwargs: dict[str, Any] = dict(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                  target_modules=settings.target_modules, bias="none",
                                  base_model_name_or_path=base_model_name_or_path)  # alpha may be a float
    return PeftLoraConfig(**kwargs)


def lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """{module name: peft LoRA layer} of every wrapped linear."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def add_lora(model: torch.nn.Module, settings: LoraConfig, *, adapter_from: str | Path | None = None,
             base_model_name_or_path: str | None = None) -> list[str]:
    """Wrap `model`'s target linears with LoRA in place, freeze every base weight, and (`adapter_from`, a
    checkpoint folder) load a saved adapter. Returns the wrapped module names."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    try:
        inject_adapter_in_model(peft_config_for(settings, base_model_name_or_path), model, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise LoraError(f"model.lora.target_modules={settings.target_modules!r} wraps nothing in "
                        f"{type(model).__name__}: {exc}") from None
    wrapped = sorted(lora_layers(model))
    if not wrapped:
        raise LoraError(f"model.lora.target_modules={settings.target_modules!r} matched no linear layer")
    vision = [n for n in wrapped if _in_vision_tower(model, n)]
    if vision:
        raise LoraError(f"model.lora.target_modules={settings.target_modules!r} wraps {len(vision)} vision-tower "
                        f"module(s) (e.g. {vision[0]}); LoRA here adapts the language model only, and vLLM does "
                        "not take LoRA on the vision tower either. Use a pattern under the language model's layers")
    for name, param in model.named_parameters():  # only the adapter trains (peft set this; be explicit)
        param.requires_grad_(_LORA_PARAM.match(name) is not None)
    if adapter_from is not None:
        load_adapter(model, adapter_from)
    return wrapped


def _in_vision_tower(model: torch.nn.Module, module_name: str) -> bool:
    from mhpo_vl.models.policy import VisionTowerNotFoundError, find_vision_tower

    try:
        tower = find_vision_tower(model)
    except VisionTowerNotFoundError:
        return False
    module = model.get_submodule(module_name)
    return any(m is module for m in tower.modules())


# ------------------------------------------------------------------------------------------- merging -------


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """peft's scale of B A: alpha / r (rsLoRA: alpha / sqrt(r))."""
    return alpha / (rank ** 0.5 if use_rslora else rank)


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B A, computed in float32 (float64 stays float64) and returned in W's dtype."""
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    delta = (lora_b.to(acc) @ lora_a.to(acc)).mul_(scaling)
    return (weight.to(acc) + delta).to(weight.dtype)


def merged_lora_weights(model: torch.nn.Module, iter_full_weights: Callable[..., Iterable[tuple[str, torch.Tensor]]]
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    """(base weight name, W + scaling B A) for each wrapped linear of `model`, one at a time: what the sampler
    needs after an update (nothing else changes under LoRA). `iter_full_weights(only=names)` is the runtime's
    (`Runtime.iter_full_weights`: under ZeRO-3 it gathers each tensor, a collective every rank runs through);
    the three tensors of a layer arrive one after another (named_parameters order), so at most one layer's are
    held at a time."""
    layers = lora_layers(model)
    wanted: dict[str, tuple[str, str]] = {}  # parameter name -> (layer, role)
    for name in layers:
        wanted[f"{name}.base_layer.weight"] = (name, "W")
        wanted[f"{name}.lora_A.{ADAPTER_NAME}.weight"] = (name, "A")
        wanted[f"{name}.lora_B.{ADAPTER_NAME}.weight"] = (name, "B")
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for pname, tensor in iter_full_weights(only=set(wanted)):
        layer, role = wanted[pname]
        parts = pending.setdefault(layer, {})
        parts[role] = tensor
        if len(parts) == 3:
            del pending[layer]
            yield f"{layer}.weight", merged_weight(parts["W"], parts["A"], parts["B"],
                                                   float(layers[layer].scaling[ADAPTER_NAME]))
    if pending:
        raise RuntimeError(f"LoRA merge: incomplete tensors for {sorted(pending)[:3]} (the weight stream skipped some)")


# ------------------------------------------------------------------------------------- saving, loading -----


def save_adapter(model: torch.nn.Module, folder: str | Path, adapter_weights: dict[str, torch.Tensor] | None = None
                 ) -> None:
    """adapter_config.json + adapter_model.safetensors in peft's format (PeftModel.from_pretrained loads them).
    `adapter_weights`: the adapter's whole tensors by parameter name (gathered under ZeRO-3); default: the model's."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config: Any = model.peft_config[ADAPTER_NAME]  # type: ignore[index]
    state = get_peft_model_state_dict(model, state_dict=adapter_weights, adapter_name=ADAPTER_NAME)
    save_file({_PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()},
              str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config.save_pretrained(str(folder))


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, {parameter name without the peft prefix: tensor}) of a saved adapter."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_adapter_checkpoint(folder):
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG}; not a LoRA checkpoint (a full fine-tuning "
                                "checkpoint is already a Hugging Face model folder)")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    return config, {k.removeprefix(_PEFT_PREFIX): v for k, v in weights.items()}


def load_adapter(model: torch.nn.Module, folder: str | Path) -> None:
    """Put a saved adapter's weights into `model`'s LoRA layers; every adapter tensor must be used."""
    from peft import set_peft_model_state_dict

    _, weights = read_adapter(folder)
    advice = "; resume with the model.lora settings the checkpoint was written with"
    try:
        result: Any = set_peft_model_state_dict(model, weights, adapter_name=ADAPTER_NAME)
    except RuntimeError as exc:  # shapes differ (another rank)
        raise LoraError(f"{folder}: the adapter does not fit this model's LoRA layers "
                        f"({str(exc).splitlines()[-1].strip()}){advice}") from None
    missing = [k for k in result.missing_keys if _LORA_PARAM.match(k)]
    if result.unexpected_keys or missing:
        raise LoraError(f"{folder}: the adapter does not fit this model's LoRA layers (unexpected "
                        f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]}){advice}")


def merged_state(config: dict[str, Any], adapter: dict[str, torch.Tensor], base_state: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """{base weight name: W + scaling B A} for every layer of a saved adapter, from the plain model's weights."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise LoraError("adapters with per-layer rank_pattern / alpha_pattern are not supported by export")
    scaling = lora_scaling(float(config["lora_alpha"]), int(config["r"]), bool(config.get("use_rslora")))
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in adapter.items():
        match = _LORA_PARAM.match(name)
        if match is None:
            raise LoraError(f"unexpected tensor {name!r} in the adapter (only lora_A / lora_B weights are exported)")
        layers.setdefault(match["module"], {})[match["which"]] = tensor
    out = {}
    for module, parts in layers.items():
        key = f"{module}.weight"
        if key not in base_state or set(parts) != {"A", "B"}:
            raise LoraError(f"the adapter's layer {module} has no base weight {key} in the model (or lacks A/B)")
        out[key] = merged_weight(base_state[key], parts["A"], parts["B"], scaling)
    return out


def export_merged(checkpoint: str | Path, out: str | Path, *, base: str | None = None) -> tuple[str, int]:
    """Write base + adapter of `checkpoint` as one Hugging Face folder (model in the base's dtype, processor or
    tokenizer) into `out`. `base`: the base model (default: the adapter's base_model_name_or_path). Returns
    (the base used, the number of merged weights)."""
    from mhpo_vl.models.policy import load_policy

    config, adapter = read_adapter(checkpoint)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{checkpoint}/{ADAPTER_CONFIG} names no base_model_name_or_path; pass --base")
    policy = load_policy(base, dtype=_saved_dtype(base), freeze_vision=False)
    model = policy.model
    merged = merged_state(config, adapter, dict(model.state_dict()))
    with torch.no_grad():
        for name, tensor in merged.items():
            model.get_parameter(name).copy_(tensor)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    policy.processor.save_pretrained(out)
    return base, len(merged)


def _saved_dtype(base: str) -> torch.dtype:
    """The dtype the base checkpoint is stored in (the export keeps it)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32"
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
