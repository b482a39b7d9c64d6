"""What a run writes as it goes: `metrics.jsonl` (one JSON object per step) and, per `trainer.loggers`, TensorBoard
events and a Weights & Biases run, all with the same metric names.

Values are plain floats by the time they get here: the trainer converts tensors once per step (one host sync).
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.config.schema import DEFAULT_LOGGERS, LOGGERS, TrainerConfig
from mhpo_vl.config.schema import check_logger_names as check_loggers
from mhpo_vl.runs.atomic_io import write_durably

__all__ = ["DEFAULT_LOGGERS", "LOGGERS", "MetricsWriter", "WandbLogger", "check_loggers", "metrics_writer",
           "read_metrics"]

log = logging.getLogger(__name__)


def metrics_writer(t: TrainerConfig, *, enabled: bool = True, run_config: dict[str, Any] | None = None) -> MetricsWriter:
    """The writer a training run uses: into ``trainer.output_dir``, to ``trainer.loggers``."""
    return MetricsWriter(t.output_dir, enabled=enabled, loggers=t.loggers, run_config=run_config)


class MetricsWriter:
    """Writes each step's metrics to every logger in ``loggers`` under the same names (default: jsonl and
    TensorBoard; ``tensorboard=False`` is the older spelling of leaving TensorBoard out)."""

    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, enabled: bool = True,
                 loggers: Sequence[str] | None = None, run_config: dict[str, Any] | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        if loggers is None:
            loggers = DEFAULT_LOGGERS if tensorboard else ("jsonl",)
        self.loggers = check_loggers(loggers)
        self._tb: Any = None  # a torch.utils.tensorboard SummaryWriter, opened at the first write
        self._tb_args: dict[str, Any] | None = None
        self._wandb: WandbLogger | None = None
        if enabled and "tensorboard" in self.loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as e:  # tensorboard is a declared dependency; say so rather than run without it
                raise RuntimeError("TensorBoard logging needs the `tensorboard` package "
                                   "(pip install tensorboard)") from e
            # Opened at the first write, so that a resume can first tell it where to cut (purge_step).
            self._tb_args = {"log_dir": str(Path(output_dir) / "tensorboard")}
        if enabled and "wandb" in self.loggers:
            self._wandb = WandbLogger(output_dir, run_config=run_config)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint, which the resumed run will write again (and the
        TensorBoard events of those steps). A torn last line (a kill or power cut mid-write) is dropped with a
        notice; any other unreadable line is an error naming the file and line, and the file is left as it is.
        W&B cannot drop logged steps: it ignores the rewritten steps' rows (metrics.jsonl is the record)."""
        if not self.enabled:
            return
        if self._tb_args is not None:
            self._tb_args["purge_step"] = step + 1
        if not self.path.exists():
            return
        kept = [line for line, record in _read_lines(self.path, torn_tail="drop") if record["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a row that was written survives a power cut (one fsync per step)
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self._tb_args is not None and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(**self._tb_args)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(step, scalars)

    def write_samples(self, step: int, rows: list[dict[str, Any]], *, tag: str | None = None) -> Path | None:
        """Validation answers (``trainer.val_samples_to_log``): ``<output_dir>/samples/step_<k>[_<tag>].jsonl``, one
        JSON object per row, written whole or not at all (a rerun of the step replaces it); the same rows as a
        TensorBoard text table (tag ``val/samples``) and a W&B table (``val/samples``) when those loggers are on."""
        if not self.enabled:
            return None
        name = f"step_{step:06d}" + (f"_{tag}" if tag else "")
        path = self.path.parent / "samples" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, "".join(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n"
                                    for row in rows))
        columns = list(dict.fromkeys(key for row in rows for key in row))
        if self._tb_args is not None and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(**self._tb_args)
        if self._tb is not None and rows:
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731 - one markdown cell
            table = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
            table += [f"| {' | '.join(cell(row.get(c, '')) for c in columns)} |" for row in rows]
            self._tb.add_text("val/samples" + (f"/{tag}" if tag else ""), "\n".join(table), step)
            self._tb.flush()
        if self._wandb is not None and rows:
            self._wandb.log_table(step, "val/samples" + (f"/{tag}" if tag else ""), columns,
                                  [[row.get(c) for c in columns] for row in rows])
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()


class WandbLogger:
    """Weights & Biases, started at the first row: ``<output_dir>/wandb/`` holds its files (offline runs included:
    set WANDB_MODE=offline, then `wandb sync <output_dir>/wandb/offline-run-*` uploads later). The run id is kept in
    ``<output_dir>/wandb/run_id``, so a resumed training run continues the same W&B run. Project: $WANDB_PROJECT,
    else "mhpo-vl"; name: the output directory's name."""

    def __init__(self, output_dir: str | Path, *, run_config: dict[str, Any] | None = None):
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError("trainer.loggers lists wandb but the `wandb` package is not installed "
                               "(pip install wandb; without a network, also set WANDB_MODE=offline)") from e
        self._wandb = wandb
        self.dir = Path(output_dir) / "wandb"
        self._config = run_config
        self._run: Any = None  # a wandb Run, started at the first log

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        id_file = self.dir / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self._run = self._wandb.init(dir=str(self.dir.parent), id=run_id, resume="allow",
                                     project=os.environ.get("WANDB_PROJECT", "mhpo-vl"),
                                     name=self.dir.parent.resolve().name, config=self._config)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self._run is None:
            self._start()
        self._run.log(scalars, step=step)

    def log_table(self, step: int, key: str, columns: list[str], data: list[list[Any]]) -> None:
        """A ``wandb.Table`` under ``key`` at ``step`` (the validation samples)."""
        if self._run is None:
            self._start()
        self._run.log({key: self._wandb.Table(columns=list[str | int](columns), data=data)}, step=step)

    def close(self) -> None:
        """Finish the run and wait until its files are written: `run.finish()` can return before the W&B service has
        flushed `run-<id>.wandb` (seen offline with wandb 0.31: the file still held only its 7-byte header in 5 of 10
        closes), so `wandb.teardown()` then stops the service, which writes the rest (its atexit hook would too, but
        not reliably under multiprocessing, as its docs say)."""
        if self._run is not None:
            self._run.finish()
            self._run = None
            self._wandb.teardown()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the fact visible
    return v


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `run_dir`/metrics.jsonl. A torn last line (a run being written, or one cut by a kill) is
    skipped with a notice; any other unreadable line is an error naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in run directory {run_dir}")
    return [record for _, record in _read_lines(path, torn_tail="skip")]


def _read_lines(path: Path, *, torn_tail: str) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each non-empty line. Only the LAST line may be torn: one without its newline that is
    not valid JSON; it is left out with a notice ("drop": it will be cut from the file)."""
    text = path.read_text()
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n"):
                log.warning("%s: line %d is a torn write (%d bytes, no newline; the run was cut off while writing "
                            "it); %s", path, number, len(line), "dropping it" if torn_tail == "drop" else "skipped")
                continue
            raise ValueError(f"{path}: line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}: line {number}: not a metrics row (an object with an integer \"step\")")
        out.append((line, record))
    return out
