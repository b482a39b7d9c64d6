"""The config checks that need a registry: the prompt template, the dataset adapters and their options, the loss
and its parameters, the reward file (`reward.function`). Each registry checks its own names (one place per rule);
this module only asks them and names the config key in the error."""
from __future__ import annotations

from pathlib import Path

from mhpo_vl.config.schema import ConfigError, RunConfig


def check_names(cfg: RunConfig) -> RunConfig:
    """The template, dataset names and options, and the loss with its parameters, before the model loads. Dataset
    names and options are not checked with data.plugins: a user module registers its names only when imported,
    which the trainer does (importing user code here would run it at config time)."""
    from mhpo_vl.prompts import get_template, load_template

    try:  # as the trainer resolves it: a file when one exists, else a built-in name
        load_template(cfg.data.template) if Path(cfg.data.template).is_file() else get_template(cfg.data.template)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data.template: {exc}") from None
    if not cfg.data.plugins:
        from mhpo_vl.datasets import adapter_for

        for key, spec in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
            try:
                adapter_for(spec.name, spec.options)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    if cfg.reward.function is not None:  # read, not run: the file is first executed in the grader's workers
        from mhpo_vl.grading.user_reward import check_spec

        try:
            check_spec(cfg.reward.function)
        except ValueError as exc:
            raise ConfigError(f"reward.function={cfg.reward.function}: {exc}") from None
    from mhpo_vl.losses import build_loss

    try:  # the loss name and its parameters are validated by the loss table itself
        build_loss(cfg.algorithm.loss, **cfg.algorithm.loss_kwargs())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"algorithm.loss={cfg.algorithm.loss!r} / algorithm.loss_params: {exc}") from exc
    return cfg
