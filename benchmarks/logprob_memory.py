"""Peak memory and time of per-token logprobs from hidden states: chunked lm_head vs naive full logits.

    python benchmarks/logprob_memory.py                       # [8192, 3584] x V=152064, float32, CPU
    python benchmarks/logprob_memory.py --tokens 2048 --device cuda --dtype bfloat16

Both modes run forward + backward of sum(g * logprob) w.r.t. hidden states AND lm_head weight (the trainer's
case). Naive = logits = h @ W.T -> log_softmax -> gather. Chunked = mhpo_vl.models.policy.chunked_lm_head_logprobs.
Each mode runs in its own subprocess. Peak memory is measured above the baseline of the inputs (hidden, weight,
targets): on CPU by sampling the process RSS every millisecond in a thread (tracemalloc does not see torch's
allocations), on CUDA with torch.cuda.max_memory_allocated. The weight gradient (V x H) counts in both modes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def _worker(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    hidden = (torch.randn(args.tokens, args.hidden, device=device, dtype=dtype) * 0.5).requires_grad_(True)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    targets = torch.randint(0, args.vocab, (args.tokens,), device=device)
    upstream = torch.randn(args.tokens, device=device, dtype=torch.float32)

    def run() -> float:
        if args.mode == "naive":
            logits = (hidden @ head.weight.T).float()
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
        else:
            from mhpo_vl.models.policy import chunked_lm_head_logprobs

            logprobs, _ = chunked_lm_head_logprobs(hidden, head, targets, chunk_size=args.chunk_size)
        (logprobs * upstream).sum().backward()
        return float(logprobs.detach().double().sum())

    if device.type == "cuda":
        run()  # warm-up (kernels, cuBLAS workspace)
        hidden.grad = head.weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        start, cpu_start = time.perf_counter(), time.process_time()
        checksum = run()
        torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        import psutil

        proc = psutil.Process()
        baseline = proc.memory_info().rss
        peak_rss = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start, cpu_start = time.perf_counter(), time.process_time()
        checksum = run()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        done.set()
        sampler.join()
        peak = peak_rss[0] - baseline
    return {"mode": args.mode, "peak_bytes": peak, "seconds": seconds, "cpu_seconds": cpu_seconds, "checksum": checksum}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--modes", default="chunked,naive", help="comma-separated subset of chunked,naive")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in the workers (0 = torch default)")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # set in the worker subprocess
    args = parser.parse_args()

    if args.mode:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(_worker(args)))
        return 0

    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "modes")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{mode}: worker failed (exit {out.returncode}):\n{out.stderr[-2000:]}", file=sys.stderr)
            rows.append({"mode": mode, "peak_bytes": float("nan"), "seconds": float("nan"), "cpu_seconds": float("nan"), "checksum": float("nan")})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"tokens={args.tokens} hidden={args.hidden} vocab={args.vocab} dtype={args.dtype} device={args.device} "
          f"chunk_size={args.chunk_size} (forward + backward, grads for hidden and lm_head weight)")
    full_logits_gb = args.tokens * args.vocab * 4 / 1e9
    print(f"one float32 [tokens, vocab] tensor = {full_logits_gb:.2f} GB; weight grad = {args.vocab * args.hidden * 4 / 1e9:.2f} GB")
    print(f"{'mode':<8} {'peak extra memory (GB)':>23} {'wall (s)':>9} {'cpu (s)':>9} {'sum(logprobs)':>16}")
    for row in rows:
        print(
            f"{row['mode']:<8} {row['peak_bytes'] / 1e9:>23.2f} {row['seconds']:>9.2f} {row['cpu_seconds']:>9.2f} {row['checksum']:>16.3f}"
        )
    by_mode = {r["mode"]: r for r in rows}
    if {"chunked", "naive"} <= set(by_mode):
        c, n = by_mode["chunked"], by_mode["naive"]
        print(
            f"naive/chunked: peak memory x{n['peak_bytes'] / c['peak_bytes']:.2f}, wall time x{n['seconds'] / c['seconds']:.2f}, "
            f"cpu time x{n['cpu_seconds'] / c['cpu_seconds']:.2f} (wall time is noisy on a shared machine)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
