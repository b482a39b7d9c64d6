"""What a run writes as it goes: `metrics.jsonl` (one JSON object per step), TensorBoard events, and a console line.

Values are plain floats by the time they get here: the trainer converts tensors once per step (one host sync).
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsWriter:
    def __init__(self, output_dir: str | Path, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self._tb_args = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as e:  # tensorboard is a declared dependency; say so rather than run without it
                raise RuntimeError("TensorBoard logging needs the `tensorboard` package "
                                   "(pip install tensorboard)") from e
            # Opened at the first write, so that a resume can first tell it where to cut (purge_step).
            self._tb_args = {"log_dir": str(Path(output_dir) / "tensorboard")}

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint, which the resumed run will write again (and the
        TensorBoard events of those steps). A torn last line (a kill or power cut mid-write) is dropped with a
        notice; any other unreadable line is an error naming the file and line, and the file is left as it is."""
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
        if self._tb_args is not None and self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(**self._tb_args)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
