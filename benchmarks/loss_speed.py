"""Loss micro-benchmark: forward+backward time and peak extra memory of each policy loss.

    python benchmarks/loss_speed.py                       # CPU, 2 threads, 512x2048 and 64x8192, float32 and bfloat16
    python benchmarks/loss_speed.py --device cuda --out benchmarks/RESULTS_losses_cuda.md

Each measurement is one ``build_loss(name)(logprobs, old, advantages, mask).loss.backward()`` with the loss's
default aggregation and all its metrics, on random inputs (log-ratios ~ N(0, 0.3^2), response lengths uniform in
[T/4, T]). Timing: ``--rounds`` rounds, the losses in a rotated order each round so a noisy neighbour hits all of
them alike, ``--repeats`` timed calls per loss per round after one warm-up; the table shows the median over all
calls, and MHPO's time over GRPO's (median of the per-round ratios, with their min-max range), both in wall-clock
time and in process CPU time (the latter is robust to other processes on a shared CPU; with 1 thread it is the
cleanest comparison there is).

Peak memory is the extra memory a call needs above its inputs (saved tensors, temporaries and the gradient of
``logprobs``): on CUDA from ``torch.cuda.max_memory_allocated``; on CPU from the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs before each call) in a worker process run with a fixed malloc mmap threshold, so
freed tensors go back to the OS at once and each call's peak is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mhpo_vl.losses import LOSSES, build_loss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_inputs(rows: int, tokens: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old_NT = -torch.rand(rows, tokens, generator=g) * 3
    logprobs_NT = (old_NT + 0.3 * torch.randn(rows, tokens, generator=g)).to(device=device, dtype=dtype)
    lengths_N = torch.randint(tokens // 4, tokens + 1, (rows,), generator=g)
    mask_NT = (torch.arange(tokens)[None, :] < lengths_N[:, None]).to(device)
    advantages_N = torch.randn(rows, generator=g).to(device=device, dtype=dtype)
    return logprobs_NT.requires_grad_(True), old_NT.to(device=device, dtype=dtype), advantages_N, mask_NT


def run_once(fn, inputs) -> None:
    logprobs_NT = inputs[0]
    logprobs_NT.grad = None
    fn(*inputs).loss.backward()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_losses(names, inputs, device: str, rounds: int, repeats: int):
    """wall[name][round] and cpu[name][round]: lists of per-call wall-clock and process CPU seconds."""
    fns = {name: build_loss(name) for name in names}
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            run_once(fns[name], inputs)  # warm-up
            _sync(device)
            wall_samples, cpu_samples = [], []
            for _ in range(repeats):
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                run_once(fns[name], inputs)
                _sync(device)
                wall_samples.append(time.perf_counter() - start_wall)
                cpu_samples.append(time.process_time() - start_cpu)
            wall[name].append(wall_samples)
            cpu[name].append(cpu_samples)
    return wall, cpu


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(names, inputs, device: str) -> dict[str, float]:
    """Extra peak memory of one forward+backward per loss (see the module docstring for how)."""
    fns = {name: build_loss(name) for name in names}
    peaks = {}
    for name in names:
        run_once(fns[name], inputs)  # first-call allocations (thread pools, caches) are not the loss's
        inputs[0].grad = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_once(fns[name], inputs)
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            base_kib = _status_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            run_once(fns[name], inputs)
            peaks[name] = (_status_kib("VmHWM") - base_kib) / 1024
        inputs[0].grad = None
    return peaks


def cpu_memory_in_worker(rows: int, tokens: int, dtype: str, names: list[str], threads: int) -> dict[str, float]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-worker", f"{rows}x{tokens}", dtype, ",".join(names), str(threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_shape(text: str) -> tuple[int, int]:
    rows, _, tokens = text.partition("x")
    return int(rows), int(tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--shapes", default="512x2048,64x8192", help="comma-separated NxT")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        shape, dtype, names, threads = args.memory_worker
        torch.set_num_threads(int(threads))
        inputs = make_inputs(*parse_shape(shape), DTYPES[dtype], "cpu")
        print(json.dumps(peak_memory_mib(names.split(","), inputs, "cpu")))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    names = args.losses.split(",")
    if "grpo" not in names or "mhpo" not in names:
        parser.error("--losses must include grpo and mhpo (the table reports their ratio)")
    if args.device == "cuda":
        device_text = torch.cuda.get_device_name()
    else:
        device_text = f"CPU ({os.cpu_count()} cores), torch.set_num_threads({args.threads})"
    lines = [
        f"Device: {device_text}; torch {torch.__version__}; rounds={args.rounds} x repeats={args.repeats}; "
        "default aggregation and all metrics; forward+backward per call; "
        f"load average at start {os.getloadavg()[0]:.1f}.",
        "",
        "| N x T | dtype | " + " | ".join(f"{n} ms" for n in names) + " | MHPO/GRPO wall (range) | MHPO/GRPO cpu | "
        + " | ".join(f"{n} MiB" for n in names) + " |",
        "|" + "---|" * (4 + 2 * len(names)),
    ]
    print("\n".join(lines), flush=True)
    for shape in args.shapes.split(","):
        rows, tokens = parse_shape(shape)
        for dtype in args.dtypes.split(","):
            inputs = make_inputs(rows, tokens, DTYPES[dtype], args.device)
            wall, cpu = time_losses(names, inputs, args.device, args.rounds, args.repeats)
            medians = {n: statistics.median(t for r in wall[n] for t in r) * 1e3 for n in names}
            ratios = [statistics.median(m) / statistics.median(g) for m, g in zip(wall["mhpo"], wall["grpo"])]
            cpu_ratios = [statistics.median(m) / statistics.median(g) for m, g in zip(cpu["mhpo"], cpu["grpo"])]
            if args.no_memory:
                memory = {n: float("nan") for n in names}
            elif args.device == "cuda":
                memory = peak_memory_mib(names, inputs, "cuda")
            else:
                memory = cpu_memory_in_worker(rows, tokens, dtype, names, args.threads)
            row = (
                f"| {rows} x {tokens} | {dtype} | " + " | ".join(f"{medians[n]:.1f}" for n in names)
                + f" | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                + f" | {statistics.median(cpu_ratios):.2f} | "
                + " | ".join(f"{memory[n]:.0f}" for n in names) + " |"
            )
            lines.append(row)
            print(row, flush=True)
            del inputs
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
