"""scripts/gpu_check.sh: one clear line without a GPU; the whole path as a CPU dry run (tiny model, vLLM CPU
engine); the MFU arithmetic by hand."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_prints_one_line_and_exits_2():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible"), lines


def test_mfu_is_the_stated_flop_formula_over_step_time_and_peak():
    cfg = SimpleNamespace(trainer=SimpleNamespace(rollout_batch_size=2, ppo_epochs=2),
                          rollout=SimpleNamespace(n=4), model=SimpleNamespace(gradient_checkpointing=True))
    # 8 rows x 10 generated tokens = 80 generated; 200 tokens/s x 2 s = 400 prompt + response tokens
    steps = [{"response/length_mean": 99.0, "throughput/tokens_per_s": 1.0, "timing/step_s": 1.0},  # warm-up: ignored
             {"response/length_mean": 10.0, "throughput/tokens_per_s": 200.0, "timing/step_s": 2.0}]
    n = 1e9
    flops = 2 * n * 80 + 2 * n * 400 + (6 + 2) * n * 400 * 2
    out = gpu_check.mfu({"cfg": cfg, "language_params": n, "steps": steps}, peak_tflops=100.0)
    assert out["achieved_tflops"] == pytest.approx(flops / 2.0 / 1e12)
    assert out["mfu"] == pytest.approx(flops / 2.0 / 100e12)
    assert gpu_check.mfu({"cfg": cfg, "language_params": n, "steps": steps}, peak_tflops=None)["mfu"] != \
        gpu_check.mfu({"cfg": cfg, "language_params": n, "steps": steps}, peak_tflops=None)["mfu"]  # NaN: unknown


@pytest.mark.slow
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    """The same code path on CPU: the tiny model, vLLM's CPU engine, 2 RL steps, the benchmarks at small shapes."""
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--tiny", "--out",
                           str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and len(summary["steps"]) == 2
    for step in summary["steps"]:
        assert all(step[f"timing/{p}_s"] >= 0 for p in gpu_check.PHASES)
        assert step["rollout/logprob_diff_max"] < 1e-4  # float32 on both sides, synced weights
        assert 0 <= step["throughput/padding_fraction_update"] < 1 and step["throughput/tokens_per_s"] > 0
    assert summary["mfu"]["achieved_tflops"] > 0
    assert summary["sleep"]["enabled"] is False  # sleep mode is CUDA only
    assert {b["returncode"] for b in summary["benchmarks"].values()} == {0}
    assert "step 2:" in proc.stdout and "sleep mode:" in proc.stdout
