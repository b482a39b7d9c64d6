"""`trainer.val_samples_to_log`: the first N held-out problems' answers per validation, in
`<output_dir>/samples/step_<k>.jsonl` (whole or absent), as TensorBoard text and as a W&B table."""
from __future__ import annotations

import json

import pytest
from run_helpers import small_overrides
from test_run_logging import wandb_history, wandb_offline  # noqa: F401 - wandb_offline is a fixture

from mhpo_vl.config import load_config
from mhpo_vl.runs.loggers import MetricsWriter

FIELDS = ["index", "prompt_id", "question", "response", "prediction", "gold", "reward", "correct", "finish_reason"]


def tensorboard_texts(log_dir) -> dict[str, list[tuple[int, str]]]:
    """{tag: [(step, markdown)]} of the text summaries in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def rows(n: int) -> list[dict]:
    return [{"index": i, "prompt_id": f"p{i}", "response": f"line one | two\n\\boxed{{{i}}}", "gold": str(i),
             "reward": 0.5 * i, "correct": i % 2 == 0} for i in range(n)]


def test_write_samples_writes_the_file_and_a_tensorboard_table(tmp_path):
    writer = MetricsWriter(tmp_path, loggers=["jsonl", "tensorboard"])
    path = writer.write_samples(3, rows(2))
    writer.write_samples(0, rows(1), tag="before_warmstart")
    writer.close()
    assert path == tmp_path / "samples" / "step_000003.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows(2)
    assert [json.loads(line) for line in (tmp_path / "samples" / "step_000000_before_warmstart.jsonl").read_text()
            .splitlines()] == rows(1)
    assert not list((tmp_path / "samples").glob("*.tmp"))
    texts = tensorboard_texts(tmp_path / "tensorboard")
    (step, table), = texts["val/samples/text_summary"]
    assert step == 3
    lines = table.splitlines()
    assert lines[0] == "| index | prompt_id | response | gold | reward | correct |"
    assert lines[2] == "| 0 | p0 | line one \\| two<br>\\boxed{0} | 0 | 0.0 | True |"  # one cell per value
    assert len(lines) == 4
    assert [s for s, _ in texts["val/samples/before_warmstart/text_summary"]] == [0]
    assert MetricsWriter(tmp_path / "other", enabled=False).write_samples(1, rows(1)) is None  # other ranks


def test_write_samples_logs_a_wandb_table(tmp_path, wandb_offline):  # noqa: F811 - the fixture
    out = tmp_path / "run"
    writer = MetricsWriter(out, loggers=["jsonl", "wandb"])
    writer.write_samples(2, rows(3))
    writer.write(2, {"val/accuracy": 0.5})
    writer.close()
    run = next((out / "wandb").glob("offline-run-*"))
    history = wandb_history(run / f"run-{(out / 'wandb' / 'run_id').read_text().strip()}.wandb")
    # one history row for step 2: the table (nested keys, flattened by the reader) and the scalar of the same step
    (row,) = history
    assert row["_step"] == 2 and row["val/accuracy"] == 0.5 and row["val/samples/_type"] == "table-file"
    assert (row["val/samples/nrows"], row["val/samples/ncols"]) == (3, 6)
    table = json.loads((run / "files" / row["val/samples/path"]).read_text())
    assert table["columns"] == list(rows(1)[0])
    assert table["data"] == [list(r.values()) for r in rows(3)]


def test_the_default_and_the_range():
    assert load_config(None, []).trainer.val_samples_to_log == 8
    assert load_config(None, ["trainer.val_samples_to_log=0"]).trainer.val_samples_to_log == 0
    with pytest.raises(ValueError, match=r"trainer.val_samples_to_log must be >= 0 \(0: none\), got -1"):
        load_config(None, ["trainer.val_samples_to_log=-1"])


@pytest.mark.slow
def test_a_two_step_run_writes_the_first_problems_of_every_validation(tmp_path, warm_tiny_vl_model_dir):
    """val_every=1: validations at steps 0, 1, 2, each file the first 3 held-out problems in data order with the first
    answer of each, its reward and verdict as the run's grader gives them (checked here against the grader)."""
    from mhpo_vl.grading import grade_one
    from mhpo_vl.grading.format import format_ok
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    cfg = load_config(None, small_overrides(warm_tiny_vl_model_dir, out, **{
        "rollout.backend": "hf", "rollout.max_tokens": "12", "trainer.total_steps": "2", "trainer.val_every": "1",
        "trainer.save_every": "0", "trainer.val_samples_to_log": "3", "reward.format_weight": "0.5"}))
    trainer = build_trainer(cfg)
    val = trainer.val_samples
    assert len(val) == 8
    trainer.fit()
    files = sorted(p.name for p in (out / "samples").iterdir())
    assert files == ["step_000000.jsonl", "step_000001.jsonl", "step_000002.jsonl"]
    texts = tensorboard_texts(out / "tensorboard")
    assert [step for step, _ in texts["val/samples/text_summary"]] == [0, 1, 2]
    seen = []
    for step, (_, table) in zip((0, 1, 2), texts["val/samples/text_summary"]):
        logged = [json.loads(line) for line in (out / "samples" / f"step_{step:06d}.jsonl").read_text().splitlines()]
        assert [row["index"] for row in logged] == [0, 1, 2]
        assert [row["prompt_id"] for row in logged] == [s.id for s in val[:3]]
        for row, sample in zip(logged, val[:3]):
            assert list(row) == FIELDS
            assert row["gold"] == sample.answer and row["question"] == sample.question
            assert row["finish_reason"] in ("stop", "length") and isinstance(row["response"], str)
            verdict = grade_one(sample, row["response"], require_think=False)
            assert (row["correct"], row["prediction"]) == (verdict.correct, verdict.prediction)
            formatted = format_ok(row["response"], False)
            assert row["reward"] == pytest.approx(0.9 * verdict.correct + 0.5 * formatted, abs=1e-12)
            assert f"| {row['index']} | {row['prompt_id']} |" in table
            seen.append(row)
    # the warm-started model writes boxed answers, so the rewards checked above are not all 0
    assert any(row["reward"] > 0 for row in seen), seen
