"""ZeRO-3 with image and text-only prompts on different ranks (issue 22, item 1).

Under ZeRO-3 every forward gathers each module's partitioned weights with a collective as the module runs. The
vision tower ran only on the ranks whose micro-batch had images, so the rank with text-only rows gathered the
language model's weights while the other gathered the tower's: gloo aborts with "collective mismatch" (NCCL hangs).
Before the fix this test failed in the first old-logprob pass (rank 1: "Received data size doesn't match expected
size"); now every rank runs the tower in every forward that any rank needs it for (mhpo_vl.train.logprobs)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from run_helpers import kill_after_checkpoint, read_metrics, run_ok, small_overrides


def _mixed_dataset(folder: Path, rows: int = 8) -> Path:
    """A column-mapping dataset whose even rows have a diagram and odd rows are text-only: with data.shuffle=false
    and one prompt per rank per step, rank 0 always gets an image prompt and rank 1 a text-only one."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(rows):
        picture = ""
        if i % 2 == 0:
            picture = f"images/{i}.png"
            img = Image.new("RGB", (64, 56), "white")
            ImageDraw.Draw(img).line([(4, 4 + i), (60, 50 - i)], fill="black", width=2)
            img.save(folder / picture)
        lines.append(json.dumps({"uid": f"m{i}", "prompt": f"What is {i} + 2?", "picture": picture,
                                 "solution": str(i + 2)}))
    (folder / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    mapping = folder / "mixed.yaml"
    mapping.write_text("data: mixed.jsonl\nsplit: train\n"
                       "columns: {id: uid, question: prompt, images: picture, answer: solution}\n")
    return mapping


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_zero3_two_ranks_one_text_only_trains_saves_and_resumes(tmp_path, tiny_vl_model_dir):
    """`mhpo-vl train` under torchrun, 2 ranks, ZeRO-3, vLLM rollouts; rank 0's prompts have images, rank 1's none.
    Killed after the step-1 checkpoint and rerun: rollouts, old logprobs, updates, saves and the resume all pass,
    and the trainer's logprobs equal vLLM's on both kinds of rows (the text-only rank's forward is unchanged)."""
    mapping = _mixed_dataset(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    port = 29300 + os.getpid() % 200
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "mhpo_vl.cli", "train", "--config", str(config),
               *small_overrides(tiny_vl_model_dir, out, **{
                   "trainer.deepspeed": "configs/deepspeed/zero3.json",
                   "data.train": f"{{name: {mapping}}}", "data.shuffle": "false",
                   "rollout.n": "2", "trainer.rollout_batch_size": "2", "trainer.minibatch_size": "2",
                   "trainer.micro_batch_size": "2", "trainer.total_steps": "3", "trainer.save_every": "1",
                   "trainer.val_every": "0", "trainer.val_before_train": "false"})]
    kill_after_checkpoint(command, out, step=1, timeout=900)
    run_ok(command, timeout=900)
    rows = [r for r in read_metrics(out) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rollout/logprob_diff_max"] < 1e-4, (r["step"], r["rollout/logprob_diff_max"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step_000001")
