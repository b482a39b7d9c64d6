"""Issue 25 item 1: each rank's vLLM engine on its own device, and closing it leaves the trainer's process group.

The placement is a pure function (`engine_kwargs`, `engine_device`), asserted here for 2 and 8 CUDA ranks; the
engine itself runs on CPU: a real 2-rank gloo job (torchrun) where each rank starts the engine the trainer would
start (external launcher, joining the trainer's process group), generates, closes it, and then all-reduces on the
trainer's group. Which GPU each engine's memory sits on is checked by scripts/gpu_check.sh --gpus 2 on a GPU machine.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mhpo_vl.rollout.vllm_sampler import engine_device, engine_kwargs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("world_size", [2, 8])
def test_each_cuda_rank_gets_the_external_launcher_on_its_own_gpu(world_size):
    devices = []
    for rank in range(world_size):
        kw = engine_kwargs("m", rank=rank, local_rank=rank, world_size=world_size, device_type="cuda",
                           gpu_memory_utilization=0.3, enable_sleep_mode=True)
        assert kw["distributed_executor_backend"] == "external_launcher"
        assert kw["tensor_parallel_size"] == 1
        assert kw["gpu_memory_utilization"] == 0.3 and kw["enable_sleep_mode"] is True and kw["dtype"] == "bfloat16"
        devices.append(engine_device(rank, world_size, "cuda"))
    assert devices == [f"cuda:{r}" for r in range(world_size)]  # the old default executor: cuda:0 on every rank


def test_one_process_keeps_the_default_executor():
    kw = engine_kwargs("m", rank=0, local_rank=0, world_size=1, device_type="cuda")
    assert "distributed_executor_backend" not in kw and engine_device(0, 1, "cuda") == "cuda:0"
    cpu = engine_kwargs("m", rank=0, local_rank=0, world_size=1, device_type="cpu")
    assert cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu and cpu["enable_chunked_prefill"] is False


def test_level_2_sleep_keeps_the_preserved_names_on_cuda_only():
    kw = engine_kwargs("m", rank=0, local_rank=0, world_size=1, device_type="cuda", enable_sleep_mode=True,
                       sleep_preserve=("visual.*",))
    assert kw["sleep_preserve_parameter_names"] == ["visual.*"]
    cpu = engine_kwargs("m", rank=0, local_rank=0, world_size=1, device_type="cpu", enable_sleep_mode=True,
                        sleep_preserve=("visual.*",))
    assert "sleep_preserve_parameter_names" not in cpu


def _worker(model_dir: str, out_dir: str) -> None:
    """One rank: the trainer's process group first (gloo, as accelerate makes it on CPU), then the engine."""
    import os

    import torch
    import torch.distributed as dist

    from mhpo_vl.rollout.vllm_sampler import VLLMSampler, launcher_ranks

    dist.init_process_group("gloo")
    rank, local_rank, world = launcher_ranks()
    trainer_group = dist.group.WORLD
    sampler = VLLMSampler(model_dir, max_model_len=256, seed=rank)
    config = sampler.llm.llm_engine.vllm_config.parallel_config
    record = {"rank": rank, "local_rank": local_rank, "world": world,
              "executor": str(config.distributed_executor_backend),
              "engine_device": str(sampler.llm.llm_engine.vllm_config.device_config.device),
              "kwargs_device": engine_device(local_rank, world, "cpu")}
    from vllm import SamplingParams

    out = sampler.llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}], SamplingParams(max_tokens=4, seed=rank),
                               use_tqdm=False)
    record["generated"] = len(out[0].outputs[0].token_ids)
    sampler.close()
    record["group_alive_after_close"] = dist.is_initialized() and dist.group.WORLD is trainer_group
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)  # fails on the old close(): vLLM destroyed the default group
    record["all_reduce"] = float(t.item())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_rank_engines_join_and_leave_the_trainers_process_group(tmp_path, tiny_vl_model_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           __file__, "worker", str(tiny_vl_model_dir), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    print(records)
    for r, rec in enumerate(records):
        assert rec["rank"] == r and rec["world"] == 2
        assert rec["executor"] == "external_launcher"
        assert rec["engine_device"] == rec["kwargs_device"] == "cpu"
        assert rec["generated"] == 4
        assert rec["group_alive_after_close"] is True
        assert rec["all_reduce"] == 3.0  # 1 + 2 over the trainer's group, after both engines closed


def _zero3_worker(model_dir: str, out_dir: str) -> None:
    """One rank of ZeRO-3: the weights `iter_full_weights` streams (one gather per layer) against one gather per
    tensor (the previous path), bit for bit."""
    import os

    import deepspeed
    import torch

    from mhpo_vl.distributed import Runtime
    from mhpo_vl.models.policy import load_policy

    rt = Runtime(device="cpu", deepspeed_config=str(REPO / "configs" / "deepspeed" / "zero3.json"))
    policy = load_policy(model_dir, dtype=torch.float32, freeze_vision=True)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    rt.prepare(policy.model, torch.optim.AdamW(trainable, lr=1e-3))
    model = rt.unwrapped()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    layered = {n: t for n, t in rt.iter_full_weights(only=names)}
    per_layer_calls = rt.gather_calls
    one_by_one = {}
    for n, p in model.named_parameters():
        if n in names:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                one_by_one[n] = p.detach().clone()
    same = sorted(layered) == sorted(one_by_one) and all(torch.equal(layered[n], one_by_one[n]) for n in names)
    rank = int(os.environ["RANK"])
    Path(out_dir, f"zero3_rank{rank}.json").write_text(json.dumps(
        {"identical": same, "tensors": len(layered), "gather_calls_per_layer": per_layer_calls,
         "gather_calls_per_tensor": len(one_by_one), "numel": sum(t.numel() for t in layered.values()),
         "partitioned": all(p.numel() == 0 or p.ds_numel != p.numel() for n, p in model.named_parameters()
                            if n in names and hasattr(p, "ds_numel"))}))
    torch.distributed.barrier()
    os._exit(0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_zero3_sync_gathers_one_layer_at_a_time_with_identical_weights(tmp_path, tiny_vl_model_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           __file__, "zero3", str(tiny_vl_model_dir), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for r in range(2):
        rec = json.loads((tmp_path / f"zero3_rank{r}.json").read_text())
        print(f"rank {r}: {rec['tensors']} tensors synced with {rec['gather_calls_per_layer']} gathers "
              f"(one per tensor: {rec['gather_calls_per_tensor']})")
        assert rec["identical"] and rec["partitioned"]
        assert rec["gather_calls_per_layer"] < rec["gather_calls_per_tensor"]


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.path.insert(0, str(REPO))
    _worker(sys.argv[2], sys.argv[3])
if __name__ == "__main__" and sys.argv[1:2] == ["zero3"]:
    sys.path.insert(0, str(REPO))
    _zero3_worker(sys.argv[2], sys.argv[3])
