"""Config schema: defaults -> YAML (with `base:`) -> overrides; unknown keys and bad values are errors; every
shipped config loads and validates."""
from pathlib import Path

import pytest

from mhpo_vl.config import ConfigError, RunConfig, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("options", "loss_params", "tiny_overrides"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_shipped_config_loads_with_the_values_its_file_sets(tmp_path):
    """Each shipped config loads, validates, holds every value its own YAML sets (read here with plain yaml, not the
    loader), keeps the defaults of the sections it does not touch, and survives save -> load unchanged."""
    import yaml

    from mhpo_vl.config import config_to_dict

    assert len(CONFIGS) >= 8
    defaults = config_to_dict(RunConfig())
    for path in CONFIGS:
        cfg = load_config(path)
        loaded = config_to_dict(cfg)
        written = yaml.safe_load(path.read_text())
        has_base = written.pop("base", None) is not None
        for dotted, value in _leaves(written):
            node = loaded
            for key in dotted.split("."):
                node = node[key]
            expected = list(value) if isinstance(value, tuple) else value
            assert node == expected or (isinstance(value, (int, float)) and node == pytest.approx(value)), \
                f"{path.name}: {dotted} is {node!r}, the file says {value!r}"
        for section in [] if has_base else [s for s in defaults if s not in written]:
            assert loaded[section] == defaults[section], f"{path.name}: section {section} is not the default"
        save_config(cfg, tmp_path / "again.yaml")
        assert load_config(tmp_path / "again.yaml") == cfg, path.name


def test_baseline_configs_differ_from_mhpo_only_in_the_loss_and_output_dir():
    mhpo = load_config(Path(CONFIGS[0]).parent / "geo3k_qwen2_5_vl_7b_mhpo.yaml")
    for name, params in [("grpo", {"eps_low": 0.2, "eps_high": 0.2}), ("gspo", {"eps_low": 3e-4, "eps_high": 4e-4}),
                         ("sapo", {"tau_pos": 1.0, "tau_neg": 1.05})]:
        other = load_config(Path(CONFIGS[0]).parent / f"geo3k_qwen2_5_vl_7b_{name}.yaml")
        assert other.algorithm.loss == name and other.algorithm.loss_params == params
        assert other.model == mhpo.model and other.data == mhpo.data and other.rollout == mhpo.rollout
        assert other.optim == mhpo.optim
    assert mhpo.algorithm.loss_params == {"c": 1.5, "k_pos": 1.5, "lambda_pos": 1.0, "k_neg": 2.0, "lambda_neg": 0.8}


def test_unknown_key_is_an_error_naming_it_and_listing_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  totl_steps: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.totl_steps.*valid keys under trainer: output_dir"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) optim\.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])


def test_wrong_types_and_invalid_values_are_errors():
    with pytest.raises(ConfigError, match="trainer.total_steps: expected int"):
        load_config(None, ["trainer.total_steps=many"])
    with pytest.raises(ConfigError, match="multiple of trainer.minibatch_size"):
        load_config(None, ["trainer.rollout_batch_size=10", "trainer.minibatch_size=4"])
    with pytest.raises(ValueError, match="c"):
        load_config(None, ["algorithm.loss_params={c: -1.0}"])
    with pytest.raises(ValueError, match="unknown loss"):
        load_config(None, ["algorithm.loss=ppo2"])
    with pytest.raises(ConfigError, match=r"warmstart.steps=5 cannot be combined with trainer.deepspeed=.*zero2"):
        load_config(None, ["warmstart.steps=5", "trainer.deepspeed=configs/deepspeed/zero2.json"])
    # A tiny model's tokenizer is chosen explicitly: it decides most of the model's cost.
    with pytest.raises(ConfigError, match=r"tiny:vl needs model.tiny_overrides.vocab: 'qwen' .* or 'small' .*got None"):
        load_config(None, ["model.name_or_path=tiny:vl"])
    with pytest.raises(ConfigError, match="got 'big'"):
        load_config(None, ["model.name_or_path=tiny:text", "model.tiny_overrides={vocab: big}"])
    assert load_config(None, ["model.name_or_path=tiny:vl", "model.tiny_overrides={vocab: small}"]).model.tiny_overrides == {"vocab": "small"}


def test_overrides_keep_other_defaults_and_parse_yaml_scalars(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-6", "data.train.limit=5", "rollout.n=8"])
    assert cfg.optim.lr == 2e-6 and cfg.rollout.n == 8
    assert cfg.data.train.name == "geometry3k" and cfg.data.train.limit == 5  # name kept from defaults
    assert cfg.data.val.split == "test"
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg  # the resolved config saved with a run reloads to the same object
