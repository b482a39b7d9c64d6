"""The run configuration's schema: one dataclass per section, each field's allowed range next to it, and each
section's rules between its own fields in its `check()`.

Defaults follow EasyR1's `examples/config.yaml` (the recipe the MHPO paper says it follows, Sec. 4.1 "standard
practices") unless a comment says otherwise; experiment YAMLs under configs/ hold only what differs.
This module imports nothing of the package: the checks that need a registry (loss, template and dataset names) are
in `mhpo_vl.config.names`, and the names of schedules, loggers, backends and dtypes are data here that the modules
implementing them import.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    pass


# The names the schema accepts; the modules that implement them import these (one list, one check).
LR_SCHEDULES = ("constant", "cosine")  # mhpo_vl.train.lr_schedule
LOGGERS = ("jsonl", "tensorboard", "wandb")  # mhpo_vl.runs.loggers
DEFAULT_LOGGERS = ("jsonl", "tensorboard")
SAMPLER_BACKENDS = ("vllm", "hf")  # mhpo_vl.rollout.factory
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


def _positive(v: Any) -> bool:
    return bool(v > 0)


def _non_negative(v: Any) -> bool:
    return bool(v >= 0)


def _unit_interval_open_closed(v: Any) -> bool:
    return bool(0 < v <= 1)


def _ranged(default: Any, check: Callable[[Any], bool], wanted: str) -> Any:
    """A field whose value must pass `check` (None always passes: None = "use the default/auto"; every float must
    also be finite); `wanted` is what the error says it must be."""
    return field(default=default, metadata={"range": (check, wanted)})


def positive(default: Any, wanted: str = "> 0") -> Any:
    return _ranged(default, _positive, wanted)


def non_negative(default: Any, wanted: str = ">= 0") -> Any:
    return _ranged(default, _non_negative, wanted)


def unit_interval(default: Any, wanted: str = "in (0, 1]") -> Any:
    return _ranged(default, _unit_interval_open_closed, wanted)


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be {'|'.join(choices)}, got {value!r}")


def check_logger_names(loggers: Sequence[str]) -> list[str]:
    """The logger names, checked: known, no repeats, jsonl among them (resume, `plot` and `study` read
    metrics.jsonl). Raises ValueError naming the problem."""
    names = list(loggers)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {', '.join(map(repr, unknown))}; valid: {', '.join(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a logger is listed twice: {names}")
    if "jsonl" not in names:
        raise ValueError(f"jsonl must be among the loggers (resume, plot and study read metrics.jsonl), got {names}")
    return names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


@dataclass
class DatasetSpec:
    name: str = "geosynth"  # a name from mhpo_vl.datasets, or a path to a column-mapping YAML
    source: str | None = None  # local file/folder; None = the dataset's Hugging Face name
    split: str | None = "train"
    limit: int | None = positive(None, "> 0 (or null: every row)")  # the first N rows (after loading, before shuffling)
    options: dict[str, Any] = field(default_factory=dict)  # adapter-specific (e.g. geosynth n/seed/difficulty)


# The language model's attention and MLP projections of Qwen2/2.5-VL (`model.language_model.layers.N...` in
# transformers v5) and Qwen2 text models (`model.layers.N...`), as one regex peft matches against whole module
# names: the vision tower's blocks (`model.visual.blocks.N.mlp.gate_proj`, ...) never match.
LORA_TARGET_MODULES = r"model\.(?:language_model\.)?layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"


@dataclass
class LoraConfig:
    """LoRA on the language model (mhpo_vl.models.lora); `model.lora: null` (the default) is full fine-tuning."""
    rank: int = positive(64)  # EasyR1 examples/qwen3_vl_4b_geo3k_grpo_lora.sh (lora.rank=64)
    alpha: float = positive(64.0)  # EasyR1 examples/config.yaml (lora.alpha: 64)
    # 0: the update's first pass must see the same function the old logprobs came from (ratio 1 on-policy)
    dropout: float = _ranged(0.0, lambda v: 0 <= v < 1, "in [0, 1)")
    # A regex matched against whole module names (peft's rule for a string), or a list of module-name suffixes
    target_modules: str | list[str] = LORA_TARGET_MODULES

    def check(self) -> None:
        t = self.target_modules
        _require([((isinstance(t, str) and bool(t)) or (isinstance(t, list) and bool(t)
                                                      and all(isinstance(x, str) and x for x in t)),
                   f"model.lora.target_modules must be a regex or a non-empty list of module names, got {t!r}")])


@dataclass
class ModelConfig:
    # Hub name, local folder, or "tiny:vl" / "tiny:text": a tiny random model built offline (mhpo-vl make-tiny-model)
    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    # tiny:* models: `vocab` (qwen | small, required) and sizes (fields of mhpo_vl.models.tiny.TinySizes)
    tiny_overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str = "bfloat16"
    freeze_vision_tower: bool = True  # issue 4: frozen by default; an error if the tower is missing
    gradient_checkpointing: bool = True
    attn_implementation: str | None = None
    lora: LoraConfig | None = None  # {rank, alpha, dropout, target_modules}: train a LoRA adapter only

    def check(self) -> None:
        check_choice("model.dtype", self.dtype, DTYPES)
        if self.lora is not None:
            self.lora.check()
        # The tokenizer decides most of a tiny model's cost (README "Tiny models"), so a config states it.
        _require([(not self.name_or_path.startswith("tiny:") or self.tiny_overrides.get("vocab") in ("qwen", "small"),
                   f"model.name_or_path={self.name_or_path} needs model.tiny_overrides.vocab: 'qwen' (the real "
                   "Qwen2.5-VL tokenizer, 151,936 embedding rows) or 'small' (a ~2k-token BPE: the fast choice on "
                   f"CPU); got {self.tiny_overrides.get('vocab')!r}")])


@dataclass
class DataConfig:
    train: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="geometry3k", split="train"))
    val: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="geometry3k", split="test"))
    plugins: list[str] = field(default_factory=list)  # user adapter modules (.py paths or dotted names) to import
    template: str = "reason_boxed"  # a name from mhpo_vl.prompts or a path to a template file
    system_prompt: str | None = None
    use_images: bool = True  # False: the text-only path (text models)
    max_prompt_length: int = positive(2048)
    min_pixels: int | None = positive(262144, "> 0 (or null: the processor's own)")  # EasyR1
    max_pixels: int | None = positive(4194304, "> 0 (or null: the processor's own)")  # EasyR1
    shuffle: bool = True
    seed: int = 1
    # Bad rows (unreadable fields or images, empty gold answers) and prompts over max_prompt_length: skip them
    # (each one listed by id) instead of stopping the run. `mhpo-vl train --skip-bad` sets it.
    skip_bad: bool = False

    def check(self) -> None:
        _require([
            (self.min_pixels is None or self.max_pixels is None or self.min_pixels <= self.max_pixels,
             f"data.min_pixels ({self.min_pixels}) must be <= data.max_pixels ({self.max_pixels})"),
            (bool(self.train.name) and bool(self.val.name), "data.train.name and data.val.name must be set"),
        ])


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # "vllm" | "hf" (HF generate: slow; for debugging and logprob comparisons)
    n: int = positive(5, ">= 1")  # K samples per prompt (EasyR1)
    temperature: float = positive(1.0, "> 0 (RL sampling is stochastic)")
    # EasyR1 since Jul 2025 and TRL (0.99 before); below 1 the trainer applies the same nucleus (docs/training.md)
    top_p: float = unit_interval(1.0)
    max_tokens: int = positive(2048, ">= 1")  # max response length (paper Sec. 4.1: 2048 for Qwen2.5 models)
    gpu_memory_utilization: float = unit_interval(0.6)
    enable_sleep_mode: bool = True  # GPU only: free vLLM's memory while the trainer works
    # GPU only, with sleep mode. 1: the engine's weights go to pinned host memory and come back at each wake-up
    # (for a 7B, ~15.4 GiB each way per rank per step), although the weight sync overwrites them right after.
    # 2: they are discarded instead (vLLM 0.32 LLM.sleep(level=2)); the frozen vision tower, which the sync never
    # sends, is kept on the host by name (vLLM's sleep_preserve_parameter_names, "visual.*"). Level 2 needs every
    # other weight synced after each wake-up: full-parameter training (what the trainer syncs). Not yet measured
    # on a GPU (issue 25), hence 1 by default; scripts/gpu_check.py's rollout/logprob_diff_max shows a broken sync.
    sleep_level: int = _ranged(1, lambda v: v in (1, 2), "1 or 2")
    max_model_len: int | None = positive(None, "> 0 (or null: max_prompt_length + max_tokens)")
    # Validation picks the best checkpoint, so it samples as the evaluation protocol does (eval/paper_vl.yaml:
    # temperature 1.0, top_p 0.7, DAPO's Avg@32 protocol; the paper states none). EasyR1: 0.6 / 0.95 (0.5 / 1.0 before).
    val_temperature: float = positive(1.0)
    val_top_p: float = unit_interval(0.7)
    val_n: int = positive(1, ">= 1")  # Avg@k during validation
    use_sampler_logprobs: bool = False  # True: old logprobs = vLLM's instead of a trainer recompute

    def check(self) -> None:
        if self.backend not in SAMPLER_BACKENDS:
            raise ConfigError(f"rollout.backend must be 'vllm' or 'hf', got {self.backend!r}")


@dataclass
class RewardConfig:
    accuracy_weight: float = non_negative(0.9)  # EasyR1 math reward: 0.9 accuracy + 0.1 format
    format_weight: float = non_negative(0.1)
    require_think: bool = True  # format = "<think>...</think> then \\boxed{}"; False: just a \\boxed{} answer
    num_workers: int = positive(2, ">= 1")
    timeout_s: float = positive(5.0)
    truncated_reward: float | None = None  # reward of a response cut at rollout.max_tokens; None = graded as usual
    # Your own reward, "path/to/file.py:name" (EasyR1's worker.reward.reward_function, in our reward section;
    # "file.py" alone means file.py:main, as there): name(sample, response) -> a float, or a dict with "score" and
    # named components logged as reward/fn/<name>. It runs in the grader's worker processes with timeout_s per
    # answer; accuracy_weight / format_weight are then unused (docs/training.md "Your own reward"). null: built-in.
    function: str | None = None
    # stop the run after this many responses in a row on which reward.function raised or timed out (each one is
    # counted in reward/grading_errors or reward/timeouts and logged with its row id)
    max_consecutive_failures: int = positive(32, ">= 1")

    def check(self) -> None:
        _require([(self.accuracy_weight + self.format_weight > 0,
                   "reward.accuracy_weight + reward.format_weight must be > 0 (otherwise every reward is 0)")])


@dataclass
class AlgorithmConfig:
    # grpo | dapo | gspo | sapo | mhpo | mhpo_lfm | mhpo_sym (the loss table checks it: mhpo_vl.config.names)
    loss: str = "mhpo"
    loss_params: dict[str, Any] = field(default_factory=dict)  # e.g. {c: 1.5} or {eps_high: 0.28}
    aggregation: str | None = None  # None = the loss's paper default
    adv_std_normalize: bool = True  # False = Dr. GRPO
    adv_eps: float = positive(1e-6)  # verl
    adv_unbiased_std: bool = True  # verl (torch.std)
    kl_coef: float = non_negative(0.0)  # k3 KL to a frozen reference; EasyR1 uses 1e-2
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups and refill the batch
    max_refill_rounds: int = non_negative(3)

    def loss_kwargs(self) -> dict[str, Any]:
        """Everything `build_loss(self.loss, **...)` takes from this section."""
        extra = {"aggregation": self.aggregation} if self.aggregation is not None else {}
        return {**self.loss_params, **extra, "kl_coef": self.kl_coef}


@dataclass
class OptimConfig:
    lr: float = positive(1e-6)  # EasyR1
    weight_decay: float = non_negative(1e-2)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = positive(1e-8)
    max_grad_norm: float = positive(1.0)
    # Learning-rate schedule over the run's optimiser updates (ppo_epochs * rollout_batch_size / minibatch_size
    # per RL step; see mhpo_vl/train/lr_schedule.py): linear warm-up over `warmup_steps` UPDATES, then
    # `lr_schedule`: "constant" (EasyR1) or "cosine" down to min_lr_ratio * lr at the last update.
    warmup_steps: int = non_negative(0)
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0

    def check(self) -> None:
        _require([
            (len(self.betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.betas),
             f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"),
            (0.0 <= self.min_lr_ratio <= 1.0,
             f"optim.min_lr_ratio must be in [0, 1] (a fraction of optim.lr), got {self.min_lr_ratio}"),
        ])


@dataclass
class WarmStartConfig:
    """Supervised warm-start on the training set's gold answers before RL (cold-start SFT). Off by default."""

    steps: int = non_negative(0)  # the most SFT steps (all of them unless stop_at_answer_prob stops it earlier)
    # stop once the model's mean P(gold response) on new batches reaches it
    stop_at_answer_prob: float | None = unit_interval(None, "in (0, 1] (or null: every warm-start step runs)")
    stop_per: str | None = None  # a metadata field (geosynth: kind): every value's mean P(gold) must reach it too
    lr: float = positive(1e-3)
    batch_size: int = positive(16, ">= 1")
    response_template: str = "<think>{reasoning}</think> \\boxed{{{answer}}}"


@dataclass
class TrainerConfig:
    output_dir: str = "runs/default"
    seed: int = 1
    # 0 RL steps would save no checkpoint at all (a warm-start alone would be lost): at least one step.
    total_steps: int = positive(100, ">= 1")
    rollout_batch_size: int = positive(512)  # prompts per step (EasyR1)
    minibatch_size: int = positive(128)  # prompts per optimiser step (EasyR1 global_batch_size)
    micro_batch_size: int = positive(4)  # rows per forward/backward (EasyR1 micro_batch_size_per_device_for_update)
    # A token budget instead (rows x (longest prompt + longest response) per micro-batch, rows sorted by length so
    # little is padding); set, it replaces micro_batch_size for the update. null: fixed rows (verl: dynamic bsz)
    max_tokens_per_micro_batch: int | None = positive(None, "> 0 (or null: trainer.micro_batch_size rows)")
    ppo_epochs: int = positive(1, ">= 1")
    logprob_micro_batch_size: int = positive(16)  # rows per no-grad forward (EasyR1 ..._for_experience)
    # the same token budget for the old-logprob pass
    logprob_max_tokens_per_micro_batch: int | None = positive(
        None, "> 0 (or null: trainer.logprob_micro_batch_size rows)")
    logprob_chunk_size: int = positive(1024)  # tokens per lm_head chunk (memory-lean logprobs)
    val_every: int = non_negative(5, ">= 0 (0: no validation during training)")
    val_before_train: bool = True
    save_every: int = non_negative(5, ">= 0 (0: no checkpoints)")
    # latest checkpoints kept besides the best; 2, so a damaged latest one always has an intact one behind it
    keep_last: int = positive(2, ">= 1")
    # stop after this many skipped (non-finite) updates in a row
    max_consecutive_nonfinite: int = positive(3, ">= 1")
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (ZeRO-2/3); None = plain torch
    # Seconds a collective may wait for the other ranks before it fails (the process group's timeout, also
    # DeepSpeed's): a stopped or hung rank then ends the job instead of holding every GPU. docs/distributed.md
    collective_timeout_s: float = positive(1800.0)
    resume: bool = True  # continue from the newest intact checkpoint in <output_dir> when one exists
    overwrite: bool = False  # start a new run in a used output_dir, removing the old run's files first
    allow_config_change: bool = False  # resume a run with settings that differ from its config.yaml (logged)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = positive(None, ">= 1 (or null: torch's default)")  # torch CPU threads
    # Where metrics go, same names in each: jsonl (metrics.jsonl: always on, resume/plot/study read it), tensorboard,
    # wandb (Weights & Biases, optional package; WANDB_MODE=offline writes <output_dir>/wandb/ without a network).
    loggers: list[str] = field(default_factory=lambda: list(DEFAULT_LOGGERS))
    # Validation answers kept per validation: the first N held-out problems (data order, the same every time, so
    # steps compare row by row), the first answer of each, to <output_dir>/samples/step_<k>.jsonl and the loggers
    # (TensorBoard text, W&B table). EasyR1: val_generations_to_log (3); TRL: log_completions (off). 0: none.
    val_samples_to_log: int = non_negative(8, ">= 0 (0: none)")

    def check(self) -> None:
        _require([(self.rollout_batch_size % self.minibatch_size == 0,
                   f"trainer.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                   f"trainer.minibatch_size ({self.minibatch_size})")])
        check_choice("trainer.device", self.device, DEVICES)
        try:
            check_logger_names(self.loggers)
        except ValueError as exc:
            raise ConfigError(f"trainer.loggers: {exc}") from None


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

    def validate(self) -> RunConfig:
        """Every value in range and the sections consistent, before anything heavy starts (one ConfigError).
        The names that need a registry (loss, template, datasets) are checked by mhpo_vl.config.names."""
        check_ranges(self)
        for section in (self.model, self.data, self.rollout, self.reward, self.optim, self.trainer):
            section.check()
        # The warm-start steps the bare module with its own optimiser; DeepSpeed keeps its own (partitioned)
        # master weights, which would overwrite those steps or, under ZeRO-3, not let them run at all.
        _require([(self.warmstart.steps == 0 or self.trainer.deepspeed is None,
                   f"warmstart.steps={self.warmstart.steps} cannot be combined with "
                   f"trainer.deepspeed={self.trainer.deepspeed}: the warm-start is plain torch; run it without "
                   "DeepSpeed and start RL from its checkpoint, or set warmstart.steps=0")])
        return self


def check_ranges(section: Any, path: str = "") -> None:
    """Every field declared with a range (positive / non_negative / unit_interval), in every nested section."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key)
            continue
        if "range" not in f.metadata or value is None:
            continue
        ok, wanted = f.metadata["range"]
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")
