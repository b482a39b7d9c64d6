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


def test_two_gpu_mode_builds_a_two_rank_torchrun_command():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--gpus", "2", "--dry-run", "--peak-tflops", "989"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    assert "scripts/gpu_check.py" in words and "--skip-benchmarks" in words
    assert words[words.index("--steps") + 1] == "2" and words[-2:] == ["--peak-tflops", "989"]
    one = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert one.stdout.split()[1:] == ["scripts/gpu_check.py"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_two_gpu_mode_without_the_gpus_prints_one_line_and_exits_2():
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--gpus", "2"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 2 and proc.stdout.strip() == "gpu_check: --gpus 2 needs 2 CUDA GPUs; this machine has 0"


def test_gpus_are_matched_by_exact_name():
    assert gpu_check.peak_by_name("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_by_name("NVIDIA H100 PCIe") == 756.0  # the substring match gave it the SXM 989
    assert gpu_check.peak_by_name("NVIDIA H100 NVL") == 835.0
    assert gpu_check.peak_by_name("NVIDIA H200") == 989.0
    assert gpu_check.peak_by_name("NVIDIA H100 something new") is None  # MFU n/a, not a guess


def test_the_gpu_check_runs_as_the_recipes_run():
    from mhpo_vl.config import load_config

    cfg = load_config(str(REPO / "configs" / "gpu_check.yaml"), [])
    assert cfg.trainer.deepspeed == "configs/deepspeed/zero2.json" and cfg.model.dtype == "bfloat16"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_synced_weight_read_back_from_the_engine_is_bit_identical(tiny_vl_model_dir):
    """The comparison gpu_check.py makes, on CPU: a perturbed weight synced into the vLLM CPU engine and read back."""
    from mhpo_vl.models.policy import load_policy
    from mhpo_vl.rollout.vllm_sampler import VLLMSampler

    policy = load_policy(str(tiny_vl_model_dir), dtype=torch.float32, freeze_vision=True)
    sampler = VLLMSampler(tiny_vl_model_dir, max_model_len=256)
    try:
        weights = {n: p.detach() for n, p in policy.model.named_parameters()}
        suffix = gpu_check.synced_weight_name("cpu")
        before = gpu_check.synced_weight_check(sampler, weights, suffix)
        assert before["identical"]  # same checkpoint on both sides
        with torch.no_grad():
            for n, p in policy.model.named_parameters():
                if n.endswith(suffix):
                    p.add_(torch.randn_like(p) * 1e-3)
        weights = {n: p.detach() for n, p in policy.model.named_parameters()}
        assert not gpu_check.synced_weight_check(sampler, weights, suffix)["identical"]  # not synced yet
        sampler.load_weights((n, t) for n, t in weights.items() if "visual" not in n)
        after = gpu_check.synced_weight_check(sampler, weights, suffix)
        print(after)
        assert after["identical"] and after["max_abs_diff"] == 0.0
    finally:
        sampler.close()
