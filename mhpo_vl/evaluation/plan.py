"""From an :class:`EvalConfig` to the problems to evaluate: each suite's source, split, prompt and selection
(checked before anything heavy starts), a checkpoint's own run settings, and what a responses file depends on."""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.evaluation.config import EvalConfig
from mhpo_vl.evaluation.suites import EvalSuite, parse_suites

TRAINING_TEMPLATE = "reason_boxed"  # suites without an official prompt use the training prompt (suites.py)
_FLAGS = {"sources": "--source", "splits": "--split", "templates": "--template", "options": "--option", "ids": "--ids"}


@dataclass
class SuitePlan:
    """One suite as this evaluation runs it: where it comes from, how it is prompted, which problems."""

    suite: EvalSuite
    source: str | None
    split: str | None
    template: str
    options: dict[str, Any] = field(default_factory=dict)
    ids: list[str] | None = None
    samples: list = field(default_factory=list)  # the selected Samples, once loaded
    dataset_index: dict = field(default_factory=dict)  # id -> position in the loaded split (selected or not)

    @property
    def name(self) -> str:
        return self.suite.name


def build_plans(config: EvalConfig) -> list[SuitePlan]:
    """Check every per-suite setting against the chosen suites before anything heavy starts."""
    from mhpo_vl.prompts import get_template

    suites = parse_suites(config.suites)
    chosen = {s.name for s in suites}
    for attr, flag in _FLAGS.items():
        for name in getattr(config, attr):
            if name not in chosen:
                raise ValueError(f"{flag} {name}=...: {name!r} is not among --suites ({', '.join(sorted(chosen))})")
    for name, source in config.sources.items():
        if not source.startswith("hf:") and not Path(source).exists():
            raise FileNotFoundError(f"--source {name}={source}: no such file or folder")
    plans = []
    for suite in suites:
        default = suite.template
        if config.training_template and suite.template == TRAINING_TEMPLATE:
            default = config.training_template
        template = config.templates.get(suite.name, default)
        get_template(template)  # unknown name / missing file: an error now, not after the engine started
        plans.append(SuitePlan(
            suite=suite, source=config.sources.get(suite.name), split=config.splits.get(suite.name, suite.split),
            template=template, options={**suite.dataset_options, **config.options.get(suite.name, {})},
            ids=config.ids.get(suite.name),
        ))
    return plans


def load_plan_samples(plan: SuitePlan, limit: int | None) -> None:
    from mhpo_vl.datasets import load_dataset

    samples = list(load_dataset(plan.suite.dataset, plan.source, plan.split, **plan.options))
    plan.dataset_index = {s.id: i for i, s in enumerate(samples)}
    if plan.ids is not None:
        by_id = {s.id: s for s in samples}
        unknown = [i for i in plan.ids if i not in by_id]
        if unknown:
            raise ValueError(f"--ids {plan.name}: {len(unknown)} id(s) not in the suite "
                             f"({plan.source or 'hub'}, split {plan.split}): {', '.join(unknown[:20])}")
        wanted = set(plan.ids)
        samples = [s for s in samples if s.id in wanted]  # dataset order, whatever order the ids came in
    if limit is not None:
        samples = samples[:limit]
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:  # the responses file is keyed by id
            raise ValueError(f"{plan.name}: problem id {sample.id!r} occurs twice in {plan.source or 'the hub copy'}")
        seen.add(sample.id)
    plan.samples = samples


def check_images(plans: list[SuitePlan], model_is_vision: bool, use_images: bool, model: str) -> None:
    for plan in plans:
        with_images = sum(bool(s.images) for s in plan.samples)
        if not use_images:
            continue
        if with_images and not model_is_vision:
            raise ValueError(f"suite {plan.name}: {with_images} problem(s) have images but {model} is a text-only "
                             "model; pass --no-images to evaluate it on the question text alone, or leave it out")
        missing = [s.id for s in plan.samples if s.metadata.get("image_missing")]
        if missing:
            raise ValueError(f"suite {plan.name}: {len(missing)} selected problem(s) have no image on disk "
                             f"(e.g. {', '.join(missing[:5])}); choose problems with --ids, or pass --no-images")


def pixel_budget(config: EvalConfig) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels): the config's, else the run's own (a checkpoint of a training run, see
    ``with_run_defaults``; None = the processor's own limits), else the training defaults, so a model sees images as
    it was trained."""
    from mhpo_vl.config import DataConfig

    defaults = DataConfig()

    def pixels(key: str) -> int | None:
        return (getattr(config, key) if getattr(config, key) is not None
                else config.run_pixels[key] if key in config.run_pixels else getattr(defaults, key))

    return pixels("min_pixels"), pixels("max_pixels")


def checkpoint_run_config(model: str) -> Path | None:
    """RUN/config.yaml when ``model`` is a checkpoint folder of a training run (RUN/checkpoints/NAME)."""
    path = Path(model)
    config = path.parent.parent / "config.yaml"
    return config if path.is_dir() and path.parent.name == "checkpoints" and config.is_file() else None


def with_run_defaults(config: EvalConfig) -> EvalConfig:
    """``config`` completed from the training run ``config.model`` is a checkpoint of: its image limits
    (data.min_pixels/max_pixels), system prompt and, for suites that use the training prompt, its template, wherever
    ``config`` leaves them unset; what was taken is said on stderr. Other models: ``config`` unchanged.
    data.max_prompt_length is not taken: it bounds the training prompts, and a suite's prompts may be longer."""
    import yaml

    run_config = checkpoint_run_config(config.model)
    if run_config is None:
        return config
    try:
        data = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError) as exc:
        raise ValueError(f"{run_config}: not a readable run config ({exc}); pass --min-pixels/--max-pixels") from None
    config, taken = copy.copy(config), []
    config.run_pixels = {key: data.get(key) for key in ("min_pixels", "max_pixels")
                         if getattr(config, key) is None and key in data}
    own = "null (the processor's own)"
    taken += [f"data.{key}={own if value is None else value}" for key, value in config.run_pixels.items()]
    if config.system_prompt is None and data.get("system_prompt") is not None:
        config.system_prompt = data["system_prompt"]
        taken.append("data.system_prompt")
    template = data.get("template")
    if template and template != TRAINING_TEMPLATE and _usable_template(template):
        config.training_template = template
        taken.append(f"data.template={template} (for suites that use the training prompt)")
    if taken:
        print(f"[mhpo-vl eval] {config.model} is a checkpoint of the run {run_config.parent}: using its "
              f"{', '.join(taken)} (flags override)", file=sys.stderr)
    return config


def _usable_template(template: str) -> bool:
    from mhpo_vl.prompts import get_template

    try:
        get_template(template)
        return True
    except (ValueError, OSError) as exc:
        print(f"[mhpo-vl eval] the run's template {template!r} is not usable here ({exc}); using "
              f"{TRAINING_TEMPLATE}", file=sys.stderr)
        return False


def run_settings(plan: SuitePlan, config: EvalConfig, use_images: bool) -> dict[str, Any]:
    """What the samples in one responses file depend on: a rerun must match it to resume. (Keys as in the files
    written so far: "benchmark" names the suite.)"""
    return {
        "model": config.model, "benchmark": plan.name, "dataset": plan.suite.dataset, "source": plan.source,
        "split": plan.split, "template": plan.template, "options": plan.options, "n": config.n,
        "temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens,
        "seed": config.seed, "dtype": config.dtype, "use_images": use_images,
        "pixels": list(pixel_budget(config)) if use_images else None, "system_prompt": config.system_prompt,
    }


def model_is_vision(model: str) -> bool:
    local_config = Path(model) / "config.json"
    if local_config.is_file():  # no transformers import (seconds) when a rerun has nothing left to sample
        try:
            return json.loads(local_config.read_text()).get("vision_config") is not None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{local_config}: corrupt JSON ({exc})") from None
    from transformers import AutoConfig

    from mhpo_vl.models.policy import is_vision_config

    return is_vision_config(AutoConfig.from_pretrained(model))


def load_processor(model: str, is_vision: bool):
    from transformers import AutoProcessor, AutoTokenizer

    return AutoProcessor.from_pretrained(model) if is_vision else AutoTokenizer.from_pretrained(model)
