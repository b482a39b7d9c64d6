"""Metric loggers (`trainer.loggers`): names checked at config load, W&B offline beside jsonl with the same names."""
from __future__ import annotations

import json
import struct
import sys

import pytest

from mhpo_vl.config import ConfigError, load_config
from mhpo_vl.runs.loggers import MetricsWriter, metrics_writer, read_metrics


def wandb_history(run_file) -> list[dict[str, float]]:
    """The history rows of an offline W&B run file (run-<id>.wandb: a LevelDB-style log of protobuf Records: 7-byte
    file header, 32 KiB blocks, each chunk with a 7-byte header crc32/length/type, type 1 full, 2-4 first/mid/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunks, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(chunks)
            chunks = b""
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({k: v for k, v in items.items() if not k.startswith("_") or k == "_step"})
    return rows


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    # WANDB_INIT_TIMEOUT: wandb starts a service process; on a loaded 2-core machine its default wait can run out.
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_INIT_TIMEOUT": "300",
                       "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                       "WANDB_CACHE_DIR": tmp_path / "wandb-cache", "WANDB_DATA_DIR": tmp_path / "wandb-data"}.items():
        monkeypatch.setenv(key, str(value))


def test_jsonl_and_wandb_offline_write_the_same_metrics(tmp_path, wandb_offline):
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_config(None, ["trainer.loggers=[jsonl,wandb]", f"trainer.output_dir={out}"])
    writer = metrics_writer(cfg.trainer)
    rows = [{"reward/mean": 0.25, "val/accuracy": 0.5}, {"reward/mean": 0.5, "grad_norm": float("nan")},
            {"reward/mean": 0.75, "val/tag": "before_warmstart"}]
    for step, row in enumerate(rows, 1):
        writer.write(step, row)
    writer.close()
    assert not (out / "tensorboard").exists()  # not asked for
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    run_id = (out / "wandb" / "run_id").read_text().strip()
    history = wandb_history(runs[0] / f"run-{run_id}.wandb")
    # The same names and values as metrics.jsonl; what is not a finite number (nan, tags) only in the JSONL.
    expected = [{"_step": r["step"], **{k: v for k, v in r.items() if k != "step" and isinstance(v, float)}}
                for r in read_metrics(out)]
    assert history == expected
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]

    # A resumed run continues the same W&B run (same id, a new offline folder for the new segment).
    again = MetricsWriter(out, loggers=["jsonl", "wandb"])
    again.write(4, {"reward/mean": 1.0})
    again.close()
    assert (out / "wandb" / "run_id").read_text().strip() == run_id
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def test_logger_names_are_checked_when_the_config_loads():
    assert load_config(None, []).trainer.loggers == ["jsonl", "tensorboard"]
    with pytest.raises(ConfigError, match=r"trainer.loggers: unknown logger\(s\) 'mlflow'; valid: jsonl, tensorboard, wandb"):
        load_config(None, ["trainer.loggers=[jsonl,mlflow]"])
    with pytest.raises(ConfigError, match="trainer.loggers: jsonl must be among the loggers"):
        load_config(None, ["trainer.loggers=[tensorboard]"])
    with pytest.raises(ConfigError, match="trainer.loggers: a logger is listed twice"):
        load_config(None, ["trainer.loggers=[jsonl,jsonl]"])


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RuntimeError, match=r"trainer.loggers lists wandb but the `wandb` package is not installed"):
        MetricsWriter(tmp_path, loggers=["jsonl", "wandb"])
    MetricsWriter(tmp_path, loggers=["jsonl", "wandb"], enabled=False)  # other ranks never import it
