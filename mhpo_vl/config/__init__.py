"""Run configuration: dataclass schema (schema.py) -> YAML file -> `key.path=value` overrides (loading.py) ->
validated object, registry names included (names.py).

    from mhpo_vl.config import load_config
    cfg = load_config("configs/demo_cpu.yaml", ["optim.lr=1e-3"])
"""
from __future__ import annotations

from pathlib import Path

from mhpo_vl.config.loading import config_to_dict, parse_config, parse_overrides, save_config
from mhpo_vl.config.names import check_names
from mhpo_vl.config.schema import (
    AlgorithmConfig,
    ConfigError,
    DataConfig,
    DatasetSpec,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
    WarmStartConfig,
)

__all__ = ["AlgorithmConfig", "ConfigError", "DataConfig", "DatasetSpec", "ModelConfig", "OptimConfig",
           "RewardConfig", "RolloutConfig", "RunConfig", "TrainerConfig", "WarmStartConfig", "config_to_dict",
           "load_config", "parse_overrides", "save_config"]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file (may name a `base:` YAML, relative to itself) <- overrides; every value checked."""
    return check_names(parse_config(path, overrides))
