"""What a study runs: settings x loss variants x seeds, each an ordinary `mhpo-vl train` run with a few overrides.

A run's config = the base YAML <- the user's overrides <- the setting's overrides <- the run's own (loss, seed).
Every loss runs with its own paper defaults (``algorithm.loss_params`` is replaced per run), so a base config's
loss parameters never leak into another loss. Runs of the same seed share the data order (``data.seed``), the
rollout seeds (``trainer.seed``) and hence the warm-start, so losses differ only in the update.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.config import ConfigError, RunConfig, load_config

# The stress setting, in one place: ratios move far from 1 when each step's rollouts are reused for several
# optimiser steps (later minibatches and epochs are off-policy) with a larger step. Half the RL steps: each step
# takes 16 optimiser steps instead of the demo's 2, so a stress run still takes 4x the demo's optimiser steps
# (960 vs 240 at the demo's sizes) in about 1.4x its time.
STRESS = {"ppo_epochs": 4, "minibatches_per_step": 4, "lr_factor": 2.0, "steps_factor": 0.5}
# The long setting, in one place (issue 24: the paper's claim is near on-policy, late in a long run): the demo's
# epochs and minibatches (2 optimiser steps per rollout batch) on a task that does not saturate early: geosynth at
# difficulty 1 (7 problem kinds instead of 3), a 24-token answer budget, 4x the demo's RL steps, validation every 10
# steps on the same 256 held-out problems. Probe (5 Dec 2026, AMD EPYC, GRPO seed 1, at 2x the demo's steps): held-out
# 0.272 -> 0.378 at step 80 (still rising at a third of the run), best 0.458 at step 170, 0.436 at step 240; the
# warm-start ran its 1000 steps (the per-kind stop was not reached); 690 s.
LONG = {"difficulty": 1, "max_tokens": 24, "steps_factor": 4.0, "val_every": 10}
# The reuse sweep, in one place (issue 24: how many optimiser steps per rollout batch each loss survives): setting
# reuseN takes N optimiser steps per rollout batch (ppo_epochs x minibatches below; reuse2 is the demo's own 1 x 2) at
# the demo's learning rate, for half the demo's RL steps (as stress, whose 16 steps at 2x the lr is the sweep's one
# point at a larger step), validating every 10 steps.
REUSE_STEPS: dict[str, tuple[int, int]] = {"reuse2": (1, 2), "reuse4": (2, 2), "reuse8": (4, 2), "reuse16": (4, 4)}
REUSE_STEPS_FACTOR, REUSE_VAL_EVERY = 0.5, 10
REUSE: dict[str, Any] = {"epochs_x_minibatches": REUSE_STEPS, "steps_factor": REUSE_STEPS_FACTOR,
                         "val_every": REUSE_VAL_EVERY}  # as printed in summary.md and study.json
SETTINGS = ("demo", "stress", "long", *REUSE_STEPS)
DEFAULT_SETTINGS = "demo,stress"  # the 36-run study's; `long` is asked for by name (hours of CPU per loss and seed)
DEFAULT_LOSSES = "mhpo,grpo,dapo,gspo,sapo,grpo_xmhpo"
# Keys each run sets itself; a user override of one would be silently overwritten, so it is refused.
STUDY_KEYS = ("algorithm.loss", "algorithm.loss_params", "trainer.seed", "data.seed", "trainer.output_dir")


class StudyError(ValueError):
    pass


@dataclass(frozen=True)
class LossVariant:
    """A row of the study: ``label`` (folder and table name), the loss, and the constant on its policy term."""

    label: str
    loss: str
    scale: float = 1.0

    def overrides(self) -> list[str]:
        params = {"scale": self.scale} if self.scale != 1.0 else {}
        return [f"algorithm.loss={self.loss}", "algorithm.loss_params=" + yaml.safe_dump(params, default_flow_style=True).strip()]


def parse_losses(text: str) -> list[LossVariant]:
    """``mhpo,grpo,grpo_x0.5,grpo_xmhpo``: a loss name, or NAME_xS for NAME with its policy term times S;
    ``_xmhpo`` is S = exp(-zeta(0)), MHPO's on-policy factor at its defaults (~0.265), taken from the MHPO module.
    Any name of the loss table works, Table 3's MHPO variants included: ``mhpo_lfm`` (no hazard), ``mhpo_sym``."""
    from mhpo_vl.losses import LOSSES
    from mhpo_vl.losses.mhpo import on_policy_factor

    variants = []
    for label in (part.strip() for part in text.split(",")):
        name, _, factor = label.partition("_x")
        if name not in LOSSES:
            raise StudyError(f"--losses: unknown loss {name!r} in {label!r}; valid: {', '.join(LOSSES)} "
                             "(optionally NAME_xSCALE, e.g. grpo_x0.5, or NAME_xmhpo for MHPO's on-policy factor)")
        if not factor:
            scale = 1.0
        elif factor == "mhpo":
            scale = on_policy_factor()
        else:
            try:
                scale = float(factor)
            except ValueError:
                scale = math.nan
            if not (math.isfinite(scale) and scale > 0):
                raise StudyError(f"--losses: {label!r}: the scale after _x must be a number > 0 or 'mhpo'")
        variants.append(LossVariant(label, name, scale))
    _no_duplicates("--losses", [v.label for v in variants])
    return variants


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise StudyError(f"--seeds must be comma-separated integers, got {text!r}") from None
    _no_duplicates("--seeds", seeds)
    return seeds


def parse_settings(text: str) -> list[str]:
    settings = [part.strip() for part in text.split(",")]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise StudyError(f"--settings: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
    _no_duplicates("--settings", settings)
    return settings


def _no_duplicates(flag: str, items: list[Any]) -> None:
    repeated = sorted({str(i) for i in items if items.count(i) > 1})
    if repeated:
        raise StudyError(f"{flag}: listed twice: {', '.join(repeated)}")


def setting_overrides(setting: str, cfg: RunConfig) -> list[str]:
    """The overrides of ``setting`` on top of ``cfg`` (the base config with the user's overrides)."""
    if setting == "demo":
        return []
    t = cfg.trainer
    if setting == "long":
        return _long_overrides(cfg)
    if setting in REUSE_STEPS:
        epochs, parts = REUSE_STEPS[setting]
        return [*_reuse_overrides(setting, cfg, epochs, parts), f"trainer.val_every={REUSE_VAL_EVERY}",
                f"trainer.total_steps={max(1, round(t.total_steps * REUSE_STEPS_FACTOR))}"]
    return [*_reuse_overrides(setting, cfg, int(STRESS["ppo_epochs"]), int(STRESS["minibatches_per_step"])),
            f"optim.lr={cfg.optim.lr * STRESS['lr_factor']!r}", f"trainer.total_steps={max(1, round(t.total_steps * STRESS['steps_factor']))}"]


def _reuse_overrides(setting: str, cfg: RunConfig, epochs: int, parts: int) -> list[str]:
    """`epochs` passes over each rollout batch in `parts` minibatches: epochs x parts optimiser steps per batch."""
    t = cfg.trainer
    if t.rollout_batch_size % parts:
        raise StudyError(f"{setting} setting: trainer.rollout_batch_size={t.rollout_batch_size} must be a multiple of "
                         f"{parts} (it is split into {parts} minibatches per step)")
    return [f"trainer.ppo_epochs={epochs}", f"trainer.minibatch_size={t.rollout_batch_size // parts}"]


def _long_overrides(cfg: RunConfig) -> list[str]:
    for key, spec in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if spec.name != "geosynth":
            raise StudyError(f"long setting: {key} must be geosynth (the setting raises its difficulty), got "
                             f"{spec.name!r}")
    d = LONG["difficulty"]
    return [f"data.train.options.difficulty={d}", f"data.val.options.difficulty={d}",
            f"rollout.max_tokens={LONG['max_tokens']}", f"trainer.val_every={LONG['val_every']}",
            f"trainer.total_steps={max(1, round(cfg.trainer.total_steps * LONG['steps_factor']))}"]


@dataclass(frozen=True)
class Run:
    setting: str
    variant: LossVariant
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.variant.label}/seed{self.seed}"


@dataclass
class Plan:
    """Everything a study is: written to ``<out>/study.json`` so ``--summarize-only`` needs nothing else."""

    out_dir: Path
    base_config: str
    user_overrides: list[str]
    settings: dict[str, list[str]]  # setting -> its overrides
    variants: list[LossVariant]
    seeds: list[int]

    def runs(self) -> list[Run]:
        return [Run(s, v, k, self.out_dir / s / v.label / f"seed{k}")
                for s in self.settings for v in self.variants for k in self.seeds]

    def run_overrides(self, run: Run) -> list[str]:
        return [*self.user_overrides, *self.settings[run.setting], *run.variant.overrides(),
                f"trainer.seed={run.seed}", f"data.seed={run.seed}"]

    def run_config(self, run: Run) -> RunConfig:
        return load_config(self.base_config, [*self.run_overrides(run), f"trainer.output_dir={run.dir}"])

    def to_json(self) -> dict[str, Any]:
        return {"base_config": self.base_config, "user_overrides": self.user_overrides, "settings": self.settings,
                "losses": [dataclasses.asdict(v) for v in self.variants], "seeds": self.seeds, "stress": STRESS,
                "long": LONG, "reuse": REUSE}

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "study.json"
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def make_plan(base_config: str, losses: str, seeds: str, settings: str, out_dir: str | Path,
              overrides: list[str]) -> Plan:
    clashes = [o for o in overrides if o.split("=", 1)[0].strip() in STUDY_KEYS]
    if clashes:
        raise StudyError(f"override(s) {', '.join(clashes)}: the study sets {', '.join(STUDY_KEYS)} per run")
    try:
        base = load_config(base_config, overrides)
    except ConfigError as err:
        raise StudyError(f"base config {base_config}: {err}") from None
    if not base.trainer.resume:
        raise StudyError(f"base config {base_config}: trainer.resume is false, but the study resumes partial runs "
                         "from their checkpoints (set it to true)")
    return Plan(Path(out_dir), base_config, list(overrides),
                {s: setting_overrides(s, base) for s in parse_settings(settings)}, parse_losses(losses),
                parse_seeds(seeds))


def load_plan(out_dir: str | Path) -> Plan:
    path = Path(out_dir) / "study.json"
    if not path.is_file():
        raise StudyError(f"{path} not found: {out_dir} is not a study folder (run `mhpo-vl study` first)")
    try:
        data = json.loads(path.read_text())
        return Plan(Path(out_dir), data["base_config"], data["user_overrides"], data["settings"],
                    [LossVariant(**v) for v in data["losses"]], data["seeds"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StudyError(f"{path}: not a valid study plan ({type(err).__name__}: {err})") from None


def config_differences(run: Run, wanted: RunConfig) -> list[str]:
    """Keys whose value in the run's saved config.yaml differs from what this study would run now (empty: same).
    A finished or partial run made with another base config or overrides must not be mixed into the study."""
    saved_path = run.dir / "config.yaml"
    if not saved_path.is_file():
        return []
    from mhpo_vl.runs.run_dir import config_differences as run_differences

    saved = yaml.safe_load(saved_path.read_text()) or {}
    # The trainer's own comparison: keys an older version did not write count as their defaults, and settings that
    # do not change what a run computes (trainer.keep_last, num_threads, ...: run_dir.NOT_BOUND) may differ.
    return [f"{k}: {old!r} in the run, {new!r} now" for k, old, new in run_differences(saved, wanted)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("options", "loss_params", "tiny_overrides"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
