"""Run configuration: dataclass schema -> YAML file -> `key.path=value` overrides -> validated object.

Unknown keys are errors that name the key and list the valid ones (a typo never silently becomes a default).
The resolved config is written next to every run (`config.yaml` in the output directory).
Defaults follow EasyR1's `examples/config.yaml` (the recipe the MHPO paper says it follows, Sec. 4.1
"standard practices") unless a comment says otherwise; experiment YAMLs under configs/ hold only what differs.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DatasetSpec:
    name: str = "geosynth"  # a name from mhpo_vl.datasets, or a path to a column-mapping YAML
    source: str | None = None  # local file/folder; None = the dataset's Hugging Face name
    split: str | None = "train"
    limit: int | None = None  # keep the first N rows (after loading, before shuffling)
    options: dict[str, Any] = field(default_factory=dict)  # adapter-specific (e.g. geosynth n/seed/difficulty)


@dataclass
class ModelConfig:
    # Hub name, local folder, or "tiny:vl" / "tiny:text": a tiny random model built offline (mhpo-vl make-tiny-model)
    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    # tiny:* models: `vocab` (qwen | small, required) and sizes (fields of mhpo_vl.tiny_model.TinySizes)
    tiny_overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str = "bfloat16"
    freeze_vision_tower: bool = True  # issue 4: frozen by default; an error if the tower is missing
    gradient_checkpointing: bool = True
    attn_implementation: str | None = None


@dataclass
class DataConfig:
    train: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="geometry3k", split="train"))
    val: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="geometry3k", split="test"))
    plugins: list[str] = field(default_factory=list)  # user adapter modules (.py paths or dotted names) to import
    template: str = "reason_boxed"  # a name from mhpo_vl.prompts or a path to a template file
    system_prompt: str | None = None
    use_images: bool = True  # False: the text-only path (text models)
    max_prompt_length: int = 2048
    min_pixels: int | None = 262144  # EasyR1
    max_pixels: int | None = 4194304  # EasyR1
    shuffle: bool = True
    seed: int = 1
    # Bad rows (unreadable fields or images, empty gold answers) and prompts over max_prompt_length: skip them
    # (each one listed by id) instead of stopping the run. `mhpo-vl train --skip-bad` sets it.
    skip_bad: bool = False


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # "vllm" | "hf" (HF generate: slow; for debugging and logprob comparisons)
    n: int = 5  # K samples per prompt (EasyR1)
    temperature: float = 1.0
    top_p: float = 0.99  # EasyR1
    max_tokens: int = 2048  # max response length (paper Sec. 4.1: 2048 for Qwen2.5 models)
    gpu_memory_utilization: float = 0.6
    enable_sleep_mode: bool = True  # GPU only: free vLLM's memory while the trainer works
    max_model_len: int | None = None  # default: max_prompt_length + max_tokens
    val_temperature: float = 0.5  # EasyR1 val_override_config
    val_top_p: float = 1.0
    val_n: int = 1  # Avg@k during validation
    use_sampler_logprobs: bool = False  # True: old logprobs = vLLM's instead of a trainer recompute


@dataclass
class RewardConfig:
    accuracy_weight: float = 0.9  # EasyR1 math reward: 0.9 accuracy + 0.1 format
    format_weight: float = 0.1
    require_think: bool = True  # format = "<think>...</think> then \\boxed{}"; False: just a \\boxed{} answer
    num_workers: int = 2
    timeout_s: float = 5.0
    truncated_reward: float | None = None  # reward of a response cut at rollout.max_tokens; None = graded as usual


@dataclass
class AlgorithmConfig:
    loss: str = "mhpo"  # grpo | dapo | gspo | sapo | mhpo
    loss_params: dict[str, Any] = field(default_factory=dict)  # e.g. {c: 1.5} or {eps_high: 0.28}
    aggregation: str | None = None  # None = the loss's paper default
    adv_std_normalize: bool = True  # False = Dr. GRPO
    adv_eps: float = 1e-6  # verl
    adv_unbiased_std: bool = True  # verl (torch.std)
    kl_coef: float = 0.0  # k3 KL to a frozen reference; EasyR1 uses 1e-2
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups and refill the batch
    max_refill_rounds: int = 3

    def loss_kwargs(self) -> dict[str, Any]:
        """Everything `build_loss(self.loss, **...)` takes from this section."""
        extra = {"aggregation": self.aggregation} if self.aggregation is not None else {}
        return {**self.loss_params, **extra, "kl_coef": self.kl_coef}


@dataclass
class OptimConfig:
    lr: float = 1e-6  # EasyR1
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    # Learning-rate schedule over the run's optimiser updates (ppo_epochs * rollout_batch_size / minibatch_size
    # per RL step; see mhpo_vl/lr_schedule.py): linear warm-up over `warmup_steps` UPDATES, then `lr_schedule`:
    # "constant" (EasyR1) or "cosine" down to min_lr_ratio * lr at the last update.
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0


@dataclass
class WarmStartConfig:
    """Supervised warm-start on the training set's gold answers before RL (cold-start SFT). Off by default."""

    steps: int = 0  # the most SFT steps (all of them unless stop_at_answer_prob stops it earlier)
    stop_at_answer_prob: float | None = None  # stop once the model's mean P(gold response) on new batches reaches it
    stop_per: str | None = None  # a metadata field (geosynth: kind): every value's mean P(gold) must reach it too
    lr: float = 1e-3
    batch_size: int = 16
    response_template: str = "<think>{reasoning}</think> \\boxed{{{answer}}}"


@dataclass
class TrainerConfig:
    output_dir: str = "runs/default"
    seed: int = 1
    total_steps: int = 100
    rollout_batch_size: int = 512  # prompts per step (EasyR1)
    minibatch_size: int = 128  # prompts per optimiser step (EasyR1 global_batch_size)
    micro_batch_size: int = 4  # rows per forward/backward (EasyR1 micro_batch_size_per_device_for_update)
    # A token budget instead (rows x (longest prompt + longest response) per micro-batch, rows sorted by length so
    # little is padding); set, it replaces micro_batch_size for the update. null: fixed rows (verl: dynamic bsz)
    max_tokens_per_micro_batch: int | None = None
    ppo_epochs: int = 1
    logprob_micro_batch_size: int = 16  # rows per no-grad forward (EasyR1 ..._for_experience)
    logprob_max_tokens_per_micro_batch: int | None = None  # the same token budget for the old-logprob pass
    logprob_chunk_size: int = 1024  # tokens per lm_head chunk (memory-lean logprobs)
    val_every: int = 5
    val_before_train: bool = True
    save_every: int = 5
    keep_last: int = 1  # latest checkpoints kept (besides the best)
    max_consecutive_nonfinite: int = 3  # stop after this many skipped (non-finite) updates in a row
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (ZeRO-2/3); None = plain torch
    resume: bool = True  # continue from the newest intact checkpoint in <output_dir> when one exists
    overwrite: bool = False  # start a new run in a used output_dir, removing the old run's files first
    allow_config_change: bool = False  # resume a run with settings that differ from its config.yaml (logged)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads
    # Where metrics go, same names in each: jsonl (metrics.jsonl: always on, resume/plot/study read it), tensorboard,
    # wandb (Weights & Biases, optional package; WANDB_MODE=offline writes <output_dir>/wandb/ without a network).
    loggers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> "RunConfig":
        """Every value in range and the sections consistent, before anything heavy starts (one ConfigError)."""
        from mhpo_vl.lr_schedule import SCHEDULES

        for key, ok, wanted in RANGES:
            value = _get_dotted(self, key)
            if not _in_range(value, ok):
                raise ConfigError(f"{key} must be {wanted}, got {value!r}")
        t = self.trainer
        checks = [
            (t.rollout_batch_size % t.minibatch_size == 0,
             f"trainer.rollout_batch_size ({t.rollout_batch_size}) must be a multiple of trainer.minibatch_size ({t.minibatch_size})"),
            (self.rollout.backend in ("vllm", "hf"), f"rollout.backend must be 'vllm' or 'hf', got {self.rollout.backend!r}"),
            (self.model.dtype in ("float32", "bfloat16", "float16"), f"model.dtype must be float32|bfloat16|float16, got {self.model.dtype!r}"),
            (t.device in ("auto", "cpu", "cuda"), f"trainer.device must be auto|cpu|cuda, got {t.device!r}"),
            (len(self.optim.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.optim.betas),
             f"optim.betas must be two numbers in [0, 1), got {list(self.optim.betas)}"),
            (self.reward.accuracy_weight + self.reward.format_weight > 0,
             "reward.accuracy_weight + reward.format_weight must be > 0 (otherwise every reward is 0)"),
            (self.data.min_pixels is None or self.data.max_pixels is None or self.data.min_pixels <= self.data.max_pixels,
             f"data.min_pixels ({self.data.min_pixels}) must be <= data.max_pixels ({self.data.max_pixels})"),
            (bool(self.data.train.name) and bool(self.data.val.name), "data.train.name and data.val.name must be set"),
            (self.optim.lr_schedule in SCHEDULES,
             f"optim.lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.optim.lr_schedule!r}"),
            (0.0 <= self.optim.min_lr_ratio <= 1.0,
             f"optim.min_lr_ratio must be in [0, 1] (a fraction of optim.lr), got {self.optim.min_lr_ratio}"),
            # The tokenizer decides most of a tiny model's cost (README "Tiny models"), so a config states it.
            (not self.model.name_or_path.startswith("tiny:") or self.model.tiny_overrides.get("vocab") in ("qwen", "small"),
             f"model.name_or_path={self.model.name_or_path} needs model.tiny_overrides.vocab: 'qwen' (the real "
             "Qwen2.5-VL tokenizer, 151,936 embedding rows) or 'small' (a ~2k-token BPE: the fast choice on CPU); got "
             f"{self.model.tiny_overrides.get('vocab')!r}"),
            # The warm-start steps the bare module with its own optimiser; DeepSpeed keeps its own (partitioned)
            # master weights, which would overwrite those steps or, under ZeRO-3, not let them run at all.
            (self.warmstart.steps == 0 or t.deepspeed is None,
             f"warmstart.steps={self.warmstart.steps} cannot be combined with trainer.deepspeed={t.deepspeed}: the "
             "warm-start is plain torch; run it without DeepSpeed and start RL from its checkpoint, or set "
             "warmstart.steps=0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_datasets()
        from mhpo_vl.run_logging import check_loggers

        try:
            check_loggers(t.loggers)
        except ValueError as exc:
            raise ConfigError(f"trainer.loggers: {exc}") from None
        # The loss name and its parameters are validated by the loss table itself (one place).
        from mhpo_vl.losses import build_loss

        try:
            build_loss(self.algorithm.loss, **self.algorithm.loss_kwargs())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"algorithm.loss={self.algorithm.loss!r} / algorithm.loss_params: {exc}") from exc
        return self

    def _check_datasets(self) -> None:
        """The prompt template, dataset names and options, before the model loads. Names and options are not checked
        with data.plugins: a user module registers its names only when imported, which the trainer does (importing
        user code here would run it at config time)."""
        from mhpo_vl.prompts import get_template, load_template

        try:  # as the trainer resolves it: a file when one exists, else a built-in name
            load_template(self.data.template) if Path(self.data.template).is_file() else get_template(self.data.template)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"data.template: {exc}") from None
        if self.data.plugins:
            return
        from mhpo_vl.datasets import adapter_for

        for key, spec in (("data.train", self.data.train), ("data.val", self.data.val)):
            try:
                adapter_for(spec.name, spec.options)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unit_interval_open_closed(v: Any) -> bool:
    return 0 < v <= 1


# (dotted key, check, what the message says it must be). A None value passes (None = "use the default/auto");
# every float must also be finite. Relations between keys are checked in RunConfig.validate itself.
RANGES: list[tuple[str, Any, str]] = [
    ("data.max_prompt_length", _positive, "> 0"),
    ("data.min_pixels", _positive, "> 0 (or null: the processor's own)"),
    ("data.max_pixels", _positive, "> 0 (or null: the processor's own)"),
    ("data.train.limit", _positive, "> 0 (or null: every row)"),
    ("data.val.limit", _positive, "> 0 (or null: every row)"),
    ("rollout.n", _positive, ">= 1"),
    ("rollout.temperature", _positive, "> 0 (RL sampling is stochastic)"),
    ("rollout.top_p", _unit_interval_open_closed, "in (0, 1]"),
    ("rollout.max_tokens", _positive, ">= 1"),
    ("rollout.gpu_memory_utilization", _unit_interval_open_closed, "in (0, 1]"),
    ("rollout.max_model_len", _positive, "> 0 (or null: max_prompt_length + max_tokens)"),
    ("rollout.val_temperature", _positive, "> 0"),
    ("rollout.val_top_p", _unit_interval_open_closed, "in (0, 1]"),
    ("rollout.val_n", _positive, ">= 1"),
    ("reward.accuracy_weight", _non_negative, ">= 0"),
    ("reward.format_weight", _non_negative, ">= 0"),
    ("reward.num_workers", _positive, ">= 1"),
    ("reward.timeout_s", _positive, "> 0"),
    ("algorithm.adv_eps", _positive, "> 0"),
    ("algorithm.kl_coef", _non_negative, ">= 0"),
    ("algorithm.max_refill_rounds", _non_negative, ">= 0"),
    ("optim.lr", _positive, "> 0"),
    ("optim.weight_decay", _non_negative, ">= 0"),
    ("optim.eps", _positive, "> 0"),
    ("optim.max_grad_norm", _positive, "> 0"),
    ("optim.warmup_steps", _non_negative, ">= 0"),
    ("warmstart.steps", _non_negative, ">= 0"),
    ("warmstart.lr", _positive, "> 0"),
    ("warmstart.batch_size", _positive, ">= 1"),
    ("warmstart.stop_at_answer_prob", _unit_interval_open_closed, "in (0, 1] (or null: every warm-start step runs)"),
    # 0 RL steps would save no checkpoint at all (a warm-start alone would be lost): at least one step.
    ("trainer.total_steps", _positive, ">= 1"),
    ("trainer.rollout_batch_size", _positive, "> 0"),
    ("trainer.minibatch_size", _positive, "> 0"),
    ("trainer.micro_batch_size", _positive, "> 0"),
    ("trainer.ppo_epochs", _positive, ">= 1"),
    ("trainer.logprob_micro_batch_size", _positive, "> 0"),
    ("trainer.max_tokens_per_micro_batch", _positive, "> 0 (or null: trainer.micro_batch_size rows)"),
    ("trainer.logprob_max_tokens_per_micro_batch", _positive, "> 0 (or null: trainer.logprob_micro_batch_size rows)"),
    ("trainer.logprob_chunk_size", _positive, "> 0"),
    ("trainer.val_every", _non_negative, ">= 0 (0: no validation during training)"),
    ("trainer.save_every", _non_negative, ">= 0 (0: no checkpoints)"),
    ("trainer.keep_last", _positive, ">= 1"),
    ("trainer.max_consecutive_nonfinite", _positive, ">= 1"),
    ("trainer.num_threads", _positive, ">= 1 (or null: torch's default)"),
]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get_dotted(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


def _in_range(value: Any, ok: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return bool(ok(value))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; valid keys under "
                          f"{path or 'the top level'}: {', '.join(types)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(types[name], value, f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path) if len(inner) == 1 else value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if origin is list and isinstance(value, (list, tuple)):
        return list(value)
    if tp is Any:
        return value
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1 c.d=[1,2]` -> nested dict; values are parsed as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


# Dataset specs: one whose `name` differs from the spec it is merged onto replaces that spec whole, so a child
# config (or an override) that switches datasets does not inherit the other dataset's source, split, limit and
# options. The same name deep-merges as every other section.
DATASET_SPEC_KEYS = ("data.train", "data.val")
REPLACED_WHOLE_KEYS = ("algorithm.loss_params",)  # another loss's parameters would be invalid for the new one


def _merge(base: dict[str, Any], extra: dict[str, Any], path: str = "", *, user_layers: bool = True) -> dict[str, Any]:
    """Deep merge of ``extra`` onto ``base``. ``user_layers``: both are user-written (a `base:` YAML and its child,
    or the YAML and the overrides), so the dataset-spec rule applies; merging onto the built-in defaults it does not."""
    out = dict(base)
    for k, v in extra.items():
        key = f"{path}.{k}" if path else k
        old = out.get(k)
        replace = (key in REPLACED_WHOLE_KEYS or not isinstance(v, dict) or not isinstance(old, dict)
                   or (user_layers and key in DATASET_SPEC_KEYS and "name" in v and v["name"] != old.get("name")))
        out[k] = v if replace else _merge(old, v, key, user_layers=user_layers)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file (may name a `base:` YAML, relative to itself) <- overrides; validated."""
    tree = _read_yaml_with_bases(Path(path)) if path else {}
    try:
        _build(RunConfig, tree, "")  # unknown keys and wrong types are reported against what the user wrote
    except ConfigError as exc:
        raise ConfigError(f"config {path} (or its base:): {exc}") from None
    tree = _merge(tree, parse_overrides(overrides or []))
    _build(RunConfig, tree, "")  # the same for the overrides
    # Merge over the full defaults so a partial section keeps its other defaults (e.g. data.val.name).
    return _build(RunConfig, _merge(config_to_dict(RunConfig()), tree, user_layers=False), "").validate()


def _read_yaml_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: circular `base:` chain")
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: invalid YAML ({_yaml_problem(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = tree.pop("base", None)
    if base:
        tree = _merge(_read_yaml_with_bases(path.parent / base, seen + (path.resolve(),)), tree)
    return tree


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's error as 'line L, column C: problem' (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}, {problem}" if context else problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark is not None else text


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return x

    return fix(d)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
