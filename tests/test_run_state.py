"""Checkpoint bookkeeping, resumable data order and the metrics file (the pieces that make resume exact)."""
import json

import torch

from mhpo_vl.runs.checkpoints import CheckpointManager
from mhpo_vl.runs.loggers import MetricsWriter, read_metrics
from mhpo_vl.train.data_order import PromptOrder


def test_prompt_order_covers_each_epoch_once_and_resumes_exactly():
    order = PromptOrder(10, 4, seed=3)
    first = [order.next_batch() for _ in range(5)]  # 20 indices = 2 epochs
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # reshuffled per epoch
    a = PromptOrder(10, 4, seed=3)
    a.next_batch()
    a.next_batch()
    b = PromptOrder(10, 4, seed=3)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(4)] == [b.next_batch() for _ in range(4)]
    assert PromptOrder(5, 2, seed=0, shuffle=False).next_batch() == [0, 1]


def _fake_model_saver(step):
    def save(folder):
        (folder / "model.safetensors").write_text(f"weights of step {step}")
    return save


def test_checkpoints_keep_latest_and_best_and_are_atomic(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    for step, acc in [(1, 0.2), (2, 0.5), (3, 0.4), (4, 0.3)]:
        mgr.save(step, save_model=_fake_model_saver(step), trainer_state={"step": step}, val_accuracy=acc)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_000002", "step_000004"]  # best (0.5) and latest
    assert mgr.latest().name == "step_000004" and mgr.best().name == "step_000002"
    assert mgr.index()["best_val_accuracy"] == 0.5
    assert [h["step"] for h in mgr.index()["history"]] == [1, 2, 3, 4]
    assert CheckpointManager.load_trainer_state(mgr.latest())["step"] == 4
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_failed_save_leaves_the_previous_checkpoint_in_place(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, save_model=_fake_model_saver(1), trainer_state={}, val_accuracy=None)

    def crash(folder):
        raise OSError("disk full")

    try:
        mgr.save(2, save_model=crash, trainer_state={}, val_accuracy=None)
    except OSError:
        pass
    assert mgr.latest().name == "step_000001"
    assert (mgr.latest() / "model.safetensors").read_text() == "weights of step 1"


def test_metrics_writer_jsonl_tensorboard_and_truncate_on_resume(tmp_path):
    w = MetricsWriter(tmp_path)
    for step in range(1, 5):
        w.write(step, {"reward/mean": torch.tensor(step / 10), "grad_norm": float("nan")})
    w.truncate_after(2)
    w.write(3, {"reward/mean": 0.33})
    w.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["reward/mean"] - 0.1) < 1e-7 and rows[0]["grad_norm"] == "nan" and rows[2]["reward/mean"] == 0.33
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
