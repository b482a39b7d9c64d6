"""What one evaluation is: the typed settings `mhpo-vl eval` / `eval-run` build from their flags, and what a caller
of :func:`mhpo_vl.evaluation.run_evaluation` fills in directly."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.evaluation.suites import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_N,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)

DEFAULT_MAX_PROMPT_LENGTH = 8192  # MathVista/MathVerse: question + up to ~5.4k image tokens at max_pixels 4194304
DTYPES = ("bfloat16", "float16", "float32")
BACKENDS = ("vllm", "hf")


@dataclass
class EvalConfig:
    """One model on some evaluation suites. Per-suite fields are keyed by suite name (every key must be among
    ``suites``). ``min_pixels`` / ``max_pixels`` None: the checkpoint's run's own limits when ``model`` is a
    checkpoint of a training run, else the training defaults (``DataConfig``)."""

    model: str  # hub name or local folder
    output_dir: str | Path
    suites: str | list[str]  # names or groups ("vl", "text"), a comma list or a list
    label: str | None = None  # the model's name in the tables (default: the folder name)
    # sampling
    n: int = DEFAULT_N
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = DEFAULT_SEED
    # which problems, and how they are prompted
    sources: dict[str, str] = field(default_factory=dict)  # local copy (file/folder; "hf:NAME" a hub name)
    splits: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)  # template name or file
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset adapter options
    ids: dict[str, list[str]] = field(default_factory=dict)  # only these problem ids
    limit: int | None = None  # only the first N problems of each suite
    use_images: bool = True  # False: image suites on their text alone (a text-only model)
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH
    min_pixels: int | None = None
    max_pixels: int | None = None
    system_prompt: str | None = None
    # the sampler and grader (when run_evaluation builds them)
    backend: str = "vllm"  # vllm | hf (transformers generate: slow, for debugging)
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # default: max_prompt_length + max_tokens
    batch_size: int = 64  # problems per sampling call; results are written after each
    grader_workers: int = 2
    grader_timeout: float = 5.0
    # the output directory
    overwrite: bool = False  # delete earlier results of these suites instead of resuming
    progress: bool = True
    verbose: bool = False  # the libraries' output live instead of into <output_dir>/logs/eval.log
    # Filled from the checkpoint's training run (with_run_defaults); not for callers to set.
    run_pixels: dict[str, int | None] = field(default_factory=dict)
    training_template: str | None = None

    def check(self) -> None:
        """Ranges and names, before anything loads (ValueError naming the setting by its flag)."""
        if self.n < 1 or self.max_tokens < 1 or self.batch_size < 1:
            raise ValueError("--n, --max-tokens and --batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")

    @property
    def engine_max_model_len(self) -> int:
        return self.max_model_len or (self.max_prompt_length + self.max_tokens)
