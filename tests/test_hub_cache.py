"""By hub NAME from a warm Hugging Face cache, offline, as a user who downloaded once would run it.

The cache (see hub_cache.py) holds a tiny random Qwen2.5-VL with the real Qwen2.5-VL tokenizer under
``Qwen/Qwen2.5-VL-7B-Instruct`` and the Geometry3K fixture as the parquet dataset ``hiyouga/geometry3k``. Every command
runs in a subprocess with HF_HOME pointing at it and HF_HUB_OFFLINE=1 (huggingface_hub reads both at import).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hub_cache import write_geometry3k_repo, write_model_repo
from run_helpers import REPO, RUN_ENV, read_metrics, small_overrides

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
SPLITS = {"train": [11, 12, 13, 14, 15, 16], "validation": [17, 18], "test": [19, 20]}
TRAIN_ANSWERS = ["80", "13", "9", "48", "5 \\sqrt { 3 }", "10"]  # fixture ids 11-16 (hf_format.jsonl)


def hub_env(home: Path) -> dict[str, str]:
    # HF_DATASETS_CACHE too: an outer setting must not lend the test a prepared copy of the dataset.
    return {**RUN_ENV, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(home: Path, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mhpo_vl.cli", *argv], cwd=REPO, env=hub_env(home),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dataset_home(tmp_path_factory, fixtures_dir) -> Path:
    home = tmp_path_factory.mktemp("hf_home_data")
    write_geometry3k_repo(home / "hub", fixtures_dir / "geometry3k", SPLITS, tmp_path_factory.mktemp("parquet"))
    return home


@pytest.fixture(scope="module")
def full_home(dataset_home, qwen_vl_model_dir) -> Path:
    write_model_repo(dataset_home / "hub", MODEL, qwen_vl_model_dir)
    return dataset_home


def test_cache_layout_is_what_huggingface_hub_reads(dataset_home):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(dataset_home / "hub")
    assert not info.warnings
    (repo,) = [r for r in info.repos if r.repo_id == "hiyouga/geometry3k"]
    assert repo.repo_type == "dataset" and repo.nb_files == 4
    (revision,) = repo.revisions
    assert set(revision.refs) == {"main"}
    assert sorted(f.file_name for f in revision.files) == [
        "README.md", "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]


def test_data_show_geometry3k_by_hub_name_offline(dataset_home):
    done = cli(dataset_home, "data", "show", "geometry3k", "--split", "train")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["11", "12", "13", "14", "15", "16"]
    assert [r["answer"] for r in rows] == TRAIN_ANSWERS
    assert rows[0]["images"] == ["<in-memory 250x251>"]  # decoded from the bytes inside the parquet file
    assert "shown 6 of 6 sample(s) (6 distinct question text(s)), 6 image(s) decoded, 0 row(s) skipped" in done.stderr


def test_dataset_missing_from_the_cache_is_a_clear_error_offline(tmp_path):
    done = cli(tmp_path, "data", "show", "geometry3k", "--split", "train")
    assert done.returncode == 1
    assert "hf:hiyouga/geometry3k" in done.stderr and "not in the Hugging Face cache" in done.stderr
    assert "hf download --repo-type dataset hiyouga/geometry3k" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_train_then_eval_by_hub_name_offline(full_home, tmp_path):
    """2 RL steps (vLLM rollouts, update, weight sync) and an evaluation, model and data named only by hub name."""
    run_dir = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("{}\n")
    overrides = small_overrides(MODEL, run_dir, **{
        "data.train": "{name: geometry3k, split: train}", "data.val": "{name: geometry3k, split: test}",
        "rollout.n": "2", "rollout.val_n": "1", "trainer.rollout_batch_size": "2", "trainer.total_steps": "2"})
    done = cli(full_home, "train", "--config", str(tmp_path / "empty.yaml"), *overrides)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = [r for r in read_metrics(run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    # vLLM loaded the model by name; each weight sync reached it (a missed sync shows as differences of ~1).
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in rows), rows
    val = [r for r in read_metrics(run_dir) if "val/num_answers" in r]
    assert [r["val/num_answers"] for r in val] == [2.0, 2.0]  # the hub test split: fixture ids 19 and 20
    checkpoint = run_dir / "checkpoints" / "step_000002"
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(checkpoint)) == 151665  # the hub model's real tokenizer went along

    out = tmp_path / "eval"
    done = cli(full_home, "eval", "--model", MODEL, "--benchmarks", "geometry3k", "--n", "2", "--max-tokens", "8",
               "--dtype", "float32", "--min-pixels", "3136", "--max-pixels", "12544", "--max-prompt-length", "1024",
               "--output-dir", str(out), "--no-progress")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["benchmarks"]["geometry3k"]["metrics"]
    assert metrics["problems"] == 2 and metrics["n"] == 2
    responses = [json.loads(line) for line in (out / "geometry3k" / "responses.jsonl").read_text().splitlines()]
    assert [r["id"] for r in responses] == ["19", "20"]
    assert all(1 <= t <= 8 for r in responses for t in r["num_tokens"])
