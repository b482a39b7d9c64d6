"""This repo's trainer side by side with TRL 1.16's GRPOTrainer: same tiny Qwen2.5-VL, same prompts with images.

    python benchmarks/peer_trl.py [--configs ours-vllm,ours-hf,trl-hf,trl-vllm] [--steps 4] [--repeats 2]
                                  [--prompts 32] [--k 8] [--max-new-tokens 16] [--threads 2] [--micro-batch 64]
                                  [--trl-path DIR] [--log-dir DIR] [--json PATH]

TRL is an optional extra (`pip install --no-deps trl==1.16.0`, pyproject's `bench` extra); `--trl-path DIR` puts
a `pip install --no-deps --target DIR trl==1.16.0` first on sys.path in the TRL processes only.

Configs:
  ours-vllm  mhpo_vl's Trainer (build_trainer + trainer.step()) with the in-process vLLM CPU sampler, as the demo
  ours-hf    the same with rollout.backend=hf: HFSampler, transformers generate() on the policy itself, in padded
             batches of up to 64 rows (prompts x k) per generate() call (HFSampler's default)
  trl-hf     trl.GRPOTrainer, use_vllm=False (transformers generate() on the whole generation batch in one call)
  trl-vllm   trl.GRPOTrainer, use_vllm=True, vllm_mode="colocate" (TRL builds its own vLLM engine in the process)

The same workload for all: the tiny random Qwen2.5-VL of configs/demo_cpu.yaml (hidden 128, 2 layers, small
vocabulary, float32), one model folder for both trainers (mhpo_vl.models.tiny.cached_tiny_model); --prompts x
--steps problems of the bundled geosynth set with diagrams (the demo's options: difficulty 0, wide), visited in
order by both (no shuffling), so step s sees the same prompts in every config; each prompt encoded by mhpo_vl's
PromptEncoder (template direct_boxed, the chat template's default system prompt) and handed to TRL as the same
conversational prompt with the encoder's already-resized image; --k samples per prompt, at most --max-new-tokens
new tokens, temperature 1.0, top-p 1.0, the vision tokens banned in sampling (ours always bans them; TRL gets
the same ids through generation_kwargs); GRPO (PPO clip eps 0.2, seq-mean-token-mean = TRL's loss_type "grpo",
group-std advantages), no KL (beta 0, no reference model), one pass over the batch (ppo_epochs = num_iterations
= 1) in 2 optimiser steps of prompts x k / 2 rows, micro-batches of --micro-batch rows for the update and for the
no-grad old-logprob pass, AdamW (lr 5e-4 as the demo, weight decay 0.01, betas (0.9, 0.999), eps 1e-8), gradient
clipping 1.0, constant learning rate, no gradient checkpointing, the vision tower frozen (TRL: requires_grad False on
its parameters before the trainer is built), the reward = mhpo_vl's grader (mhpo_vl.grading RewardFunction, the
demo's reward settings incl. reward 0 for an answer cut off at the token limit) as TRL's reward function.

What a step is. Ours: one `trainer.step()` = prompts -> rollouts -> rewards -> advantages -> old logprobs ->
2 optimiser steps -> weight sync (vLLM), timed around the call. TRL: its Trainer counts optimiser steps; with
per_device_train_batch_size = --micro-batch, gradient_accumulation_steps = rows per optimiser step / micro-batch and
generation_batch_size = prompts x k (steps_per_generation = rows per RL step / micro-batch), TRL generates the
whole batch at the first micro-step of every other optimiser step (one vLLM weight sync before it), scores it,
computes old logprobs (since gradient_accumulation_steps is not a multiple of steps_per_generation) and buffers it
for the two optimiser steps. So one of our steps = TRL optimiser steps 2i-1 and 2i, and its time is the wall time
between TRL's on_step_end of optimiser step 2i-2 and that of step 2i (TrainerCallback; step 1 from on_train_begin),
which includes everything TRL's loop does in between (data loading, tokenisation, generation, reward, old
logprobs, the updates). TRL runs max_steps = 2 x --steps optimiser steps.

Each (config, repeat) runs in a fresh subprocess (repeats alternate configs: for r in repeats: for c in configs),
so peak RSS is that process's ru_maxrss (vLLM's engine included when colocated; the grader's worker processes are
not counted, in any config). Reported per config: seconds per step = the median of steps 2..N over all repeats
(step 1 pays one-off costs: AdamW state, vLLM's first batch, compilation); CPU s/step = the same median of the
process's CPU seconds (all its threads; vLLM's in-process engine included, the grader's workers not), steadier than
wall time on a shared machine; generated tokens/s = median of
completion tokens per step / step seconds (same steps); peak RSS = the max over repeats; set-up = model, data,
engine and trainer construction (median over repeats); then the ratios TRL's fastest config s/step / ours' fastest
and TRL's peak RSS / ours' (of those same fastest configs). A failed run keeps its traceback in its log file under
--log-dir, its row says `did not run: <first line of the error>`, and the benchmark goes on.
Prints a progress line on stderr per finished run, the markdown table on stdout and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("ours-vllm", "ours-hf", "trl-hf", "trl-vllm")
DEMO_SIZES = {"hidden_size": 128, "num_hidden_layers": 2, "vocab": "small"}  # configs/demo_cpu.yaml tiny_overrides
LR = 5.0e-4  # configs/demo_cpu.yaml optim.lr
MAX_PROMPT_LENGTH = 256  # configs/demo_cpu.yaml data.max_prompt_length
GIB = 1024 ** 3


# ----------------------------------------------------------------------------------------- pure parts ----
def timed_steps(step_seconds: list[float]) -> list[float]:
    """Steps 2..N of one run (step 1 pays one-off costs); a 1-step run keeps its only step."""
    return list(step_seconds[1:]) if len(step_seconds) > 1 else list(step_seconds)


def median_step_seconds(runs: list[list[float]]) -> float:
    """Median over all repeats of steps 2..N."""
    values = [s for run in runs for s in timed_steps(run)]
    if not values:
        raise ValueError("no timed steps")
    return statistics.median(values)


def median_tokens_per_s(runs: list[list[tuple[float, float]]]) -> float:
    """Median over all repeats (steps 2..N) of completion tokens / step seconds; a run is [(seconds, tokens), ...]."""
    values = [tokens / seconds for run in runs for seconds, tokens in timed_steps(run) if seconds > 0]
    if not values:
        raise ValueError("no timed steps")
    return statistics.median(values)


def first_line(error: str) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def summarize(config: str, results: list[dict]) -> dict:
    """One row from a config's per-repeat child results (each {"steps": [{"seconds", "completion_tokens", ...}],
    "peak_rss_gb", "setup_s"} or {"error", "log", ...}). Only runs that finished every step count."""
    ok = [r for r in results if not r.get("error")]
    failed = [r for r in results if r.get("error")]
    row: dict[str, Any] = {"config": config, "runs": len(results), "failed_runs": len(failed),
                           "logs": [r["log"] for r in results if r.get("log")]}
    if failed:
        row["error"] = first_line(failed[0]["error"])
        row["error_log"] = failed[0].get("log")
        row["error_at_step"] = failed[0].get("failed_at_step")
    if not ok:
        row["ran"] = False
        return row
    seconds = [[s["seconds"] for s in r["steps"]] for r in ok]
    pairs = [[(s["seconds"], s["completion_tokens"]) for s in r["steps"]] for r in ok]
    row.update({
        "ran": True,
        "s_per_step": median_step_seconds(seconds),
        "cpu_s_per_step": (median_step_seconds([[s["cpu_seconds"] for s in r["steps"]] for r in ok])
                           if all("cpu_seconds" in s for r in ok for s in r["steps"]) else None),
        "gen_tokens_per_s": median_tokens_per_s(pairs),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in ok),
        "setup_s": statistics.median(r["setup_s"] for r in ok),
        "step_seconds": seconds,
        "completion_tokens_mean": statistics.mean(s["completion_tokens"] for r in ok for s in r["steps"]),
        "prompt_tokens_per_row": _mean_or_none([s["prompt_tokens"] / s["rows"] for r in ok for s in r["steps"]
                                                if s.get("prompt_tokens") is not None and s.get("rows")]),
        "reward_mean": statistics.mean(s["reward_mean"] for r in ok for s in r["steps"]),
        "torch_threads": sorted({s["torch_threads"] for r in ok for s in r["steps"]}),
    })
    return row


def ratios(rows: list[dict]) -> dict:
    """TRL's fastest config s/step over ours' fastest, and the peak-RSS ratio of those two configs; None where a
    side has no config that ran."""
    def fastest(prefix: str) -> dict | None:
        ran = [r for r in rows if r["config"].startswith(prefix) and r.get("ran")]
        return min(ran, key=lambda r: r["s_per_step"]) if ran else None

    ours, trl = fastest("ours-"), fastest("trl-")
    out: dict[str, Any] = {"ours_fastest": ours and ours["config"], "trl_fastest": trl and trl["config"],
                           "step_time_ratio_trl_over_ours": None, "peak_rss_ratio_trl_over_ours": None,
                           "cpu_time_ratio_trl_over_ours": None}
    if ours and trl:
        out["step_time_ratio_trl_over_ours"] = trl["s_per_step"] / ours["s_per_step"]
        out["peak_rss_ratio_trl_over_ours"] = trl["peak_rss_gb"] / ours["peak_rss_gb"]
        if trl.get("cpu_s_per_step") and ours.get("cpu_s_per_step"):
            out["cpu_time_ratio_trl_over_ours"] = trl["cpu_s_per_step"] / ours["cpu_s_per_step"]
    return out


def format_row(row: dict) -> str:
    if not row.get("ran"):
        note = f"log: {row.get('error_log')}" if row.get("error_log") else ""
        if row.get("error_at_step"):
            note = f"failed at step {row['error_at_step']}; " + note
        return f"| {row['config']} | did not run: {row.get('error', 'unknown error')} | | | | | {note} |"
    note = []
    if row.get("failed_runs"):
        note.append(f"{row['failed_runs']} of {row['runs']} runs failed: {row.get('error')} (log: {row.get('error_log')})")
    prompt = row.get("prompt_tokens_per_row")
    note.append(f"prompt tokens/row {'?' if prompt is None else f'{prompt:.1f}'}, completion tokens/step "
                f"{row['completion_tokens_mean']:.0f}, reward {row['reward_mean']:.3f}, torch threads "
                f"{'/'.join(map(str, row['torch_threads']))}")
    cpu = "" if row.get("cpu_s_per_step") is None else f"{row['cpu_s_per_step']:.2f}"
    return (f"| {row['config']} | {row['s_per_step']:.2f} | {cpu} | {row['gen_tokens_per_s']:.0f} | {row['peak_rss_gb']:.2f} "
            f"| {row['setup_s']:.1f} | {'; '.join(note)} |")


def format_table(rows: list[dict], ratio: dict) -> str:
    lines = ["| config | s/step (median, steps 2..N) | CPU s/step | generated tokens/s | peak RSS GB | set-up s | notes |",
             "|---|---|---|---|---|---|---|", *(format_row(r) for r in rows)]
    if ratio["step_time_ratio_trl_over_ours"] is not None:
        lines.append("")
        lines.append(f"TRL fastest ({ratio['trl_fastest']}) s/step / ours fastest ({ratio['ours_fastest']}) s/step = "
                     f"{ratio['step_time_ratio_trl_over_ours']:.2f}x; peak RSS {ratio['trl_fastest']} / "
                     f"{ratio['ours_fastest']} = {ratio['peak_rss_ratio_trl_over_ours']:.2f}x"
                     + (f"; CPU s/step {ratio['cpu_time_ratio_trl_over_ours']:.2f}x"
                        if ratio.get("cpu_time_ratio_trl_over_ours") else ""))
    else:
        lines.append("")
        lines.append("ratio: not available (needs at least one ours-* and one trl-* config that ran)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- shared set-up ----
def model_folder() -> Path:
    from mhpo_vl.models.tiny import cached_tiny_model

    return cached_tiny_model("vl", REPO / ".cache" / "tiny_models", **DEMO_SIZES)


def run_config(args, backend: str, out_dir: Path):
    """The RunConfig both trainers are built from (ours directly; TRL reads its data, encoder and reward from it)."""
    from mhpo_vl.config import load_config

    rows = args.prompts * args.k
    if args.prompts % 2 or (rows // 2) % args.micro_batch:
        raise ValueError(f"--prompts must be even and (prompts x k / 2 = {rows // 2}) a multiple of --micro-batch "
                         f"({args.micro_batch})")
    return load_config(str(REPO / "configs" / "demo_cpu.yaml"), [
        f"rollout.backend={backend}", f"rollout.n={args.k}", f"rollout.max_tokens={args.max_new_tokens}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "algorithm.loss=grpo", "algorithm.kl_coef=0.0",
        f"optim.lr={LR}", "optim.warmup_steps=0", "optim.lr_schedule=constant", "warmstart.steps=0",
        f"data.train.options.n={args.prompts * args.steps}", "data.val.options.n=4", "data.shuffle=false",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}", f"trainer.output_dir={out_dir}",
        f"trainer.total_steps={args.steps}", f"trainer.rollout_batch_size={args.prompts}",
        f"trainer.minibatch_size={args.prompts // 2}", f"trainer.micro_batch_size={args.micro_batch}",
        f"trainer.logprob_micro_batch_size={args.micro_batch}", "trainer.ppo_epochs=1",
        f"trainer.num_threads={args.threads}", "trainer.loggers=[jsonl]", "trainer.device=cpu"])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is KiB on Linux


# --------------------------------------------------------------------------------------------- ours ----
def child_ours(args, backend: str, work: Path, result: dict) -> None:
    import torch

    from mhpo_vl.train import build_trainer

    cfg = run_config(args, backend, work / "run")
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, cache_dir=REPO / ".cache")
    result["setup_s"] = time.perf_counter() - t0
    rows = args.prompts * args.k
    try:
        for i in range(args.steps):
            result["failed_at_step"] = i + 1
            t, cpu = time.perf_counter(), time.process_time()
            m = trainer.step()
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            completion = m["response/length_mean"] * rows
            prompt = m["throughput/tokens_per_s"] * m["timing/step_s"] - completion
            result["steps"].append({"seconds": seconds, "cpu_seconds": cpu, "completion_tokens": completion, "prompt_tokens": round(prompt),
                                    "rows": rows, "reward_mean": m["reward/mean"],
                                    "torch_threads": torch.get_num_threads()})
            result.pop("failed_at_step")
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------- TRL ----
def child_trl(args, use_vllm: bool, work: Path, result: dict) -> None:
    if args.trl_path:
        sys.path.insert(0, str(Path(args.trl_path).resolve()))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # what mhpo_vl's vLLM sampler sets (GiB of KV cache on CPU)
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mhpo_vl.models.policy import load_policy, vision_token_ids
    from mhpo_vl.train.parts import load_datasets, make_encoder, make_reward

    result["trl_version"] = trl.__version__
    t0 = time.perf_counter()
    cfg = run_config(args, "hf", work / "unused")
    folder = model_folder()
    policy = load_policy(folder, dtype=torch.float32, freeze_vision=True)  # vision tower: requires_grad False
    model = policy.model
    encoder = make_encoder(cfg, policy)
    train, _ = load_datasets(cfg, encoder)
    encoded = encoder.encode(train)
    reward_fn = make_reward(cfg)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    banned = vision_token_ids(policy.tokenizer)

    dataset = Dataset.from_dict({
        # The encoder's rendered text, as a conversation TRL templates itself; the image goes before the text, as
        # the encoder puts it, and is the encoder's already-resized image (the processor leaves it as it is).
        "prompt": [[{"role": "user", "content": encoder.template.render(p.sample)}] for p in encoded],
        "image": [p.images[0] for p in encoded],
        "sample_idx": list(range(len(encoded))),
    })
    generated: list[dict] = []  # one entry per reward call = per generation batch = per RL step

    def mhpo_vl_reward(prompts, completions, completion_ids, sample_idx, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        truncated = [bool(ids) and ids[-1] not in eos_ids for ids in completion_ids]
        out = reward_fn([train[i] for i in sample_idx], texts, truncated=truncated)
        generated.append({"completion_tokens": sum(len(ids) for ids in completion_ids), "rows": len(texts),
                          "reward_mean": statistics.mean(out.rewards)})
        return out.rewards

    rows = args.prompts * args.k
    per_update = rows // 2
    config = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, fp16=False, seed=cfg.trainer.seed,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, log_completions=False,
        max_steps=2 * args.steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=cfg.optim.weight_decay, adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1],
        adam_epsilon=cfg.optim.eps, max_grad_norm=cfg.optim.max_grad_norm, gradient_checkpointing=False,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=per_update // args.micro_batch,
        generation_batch_size=rows, num_generations=args.k, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", epsilon=0.2, num_iterations=1,
        scale_rewards="group", shuffle_dataset=False, remove_unused_columns=False, dataloader_num_workers=0,
        use_vllm=use_vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=MAX_PROMPT_LENGTH + args.max_new_tokens, vllm_enable_sleep_mode=False,
        vllm_importance_sampling_correction=False,  # ours has none either; old logprobs are still recomputed
        generation_kwargs=({"logit_bias": {i: -100.0 for i in banned}} if use_vllm else {"suppress_tokens": banned}),
    )
    marks: list[float] = []
    cpu_marks: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())
            cpu_marks.append(time.process_time())

        def on_step_end(self, a, state, *rest, **k):
            if state.global_step % 2 == 0:  # every second optimiser step closes one of our RL steps
                marks.append(time.perf_counter())
                cpu_marks.append(time.process_time())
                i = len(marks) - 2
                gen = generated[i] if i < len(generated) else {"completion_tokens": float("nan"), "rows": rows,
                                                                "reward_mean": float("nan")}
                seen = state.num_input_tokens_seen
                prompt = seen - (result.get("_seen", 0)) - gen["completion_tokens"]
                result["_seen"] = seen
                result["steps"].append({"seconds": marks[-1] - marks[-2], "cpu_seconds": cpu_marks[-1] - cpu_marks[-2],
                                        "completion_tokens": gen["completion_tokens"],
                                        "prompt_tokens": prompt, "rows": gen["rows"],
                                        "reward_mean": gen["reward_mean"], "torch_threads": torch.get_num_threads()})
                result["failed_at_step"] = len(result["steps"]) + 1

    trainer = GRPOTrainer(model=model, reward_funcs=[mhpo_vl_reward], args=config, train_dataset=dataset,
                          processing_class=policy.processor, callbacks=[StepTimer()])
    result["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result["setup_s"] = time.perf_counter() - t0
    result["failed_at_step"] = 1
    try:
        trainer.train()
    finally:
        result.pop("_seen", None)
        reward_fn.grader.close()
    if len(result["steps"]) != args.steps:
        raise RuntimeError(f"TRL ran {len(result['steps'])} RL steps, expected {args.steps}")
    result.pop("failed_at_step", None)


def child_main(args) -> int:
    import traceback

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"config": args.child, "steps": [], "pid": os.getpid()}
    code = 0
    with tempfile.TemporaryDirectory(prefix="peer_trl_") as tmp:
        try:
            if args.child.startswith("ours-"):
                child_ours(args, args.child.split("-", 1)[1], Path(tmp), result)
            else:
                child_trl(args, args.child == "trl-vllm", Path(tmp), result)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, the traceback stays in the log
            traceback.print_exc()
            result["error"] = f"{type(exc).__name__}: {first_line(str(exc)) if str(exc) else ''}".rstrip(": ")
            code = 1
    result["peak_rss_gb"] = peak_rss_gb()
    Path(args.result).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # vLLM / grader pools can leave non-daemon threads behind; the result is written


# ------------------------------------------------------------------------------------------- parent ----
def run_child(args, config: str, repeat: int, log_dir: Path) -> dict:
    log = log_dir / f"{config}.r{repeat}.log"
    result_file = log_dir / f"{config}.r{repeat}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, "--result", str(result_file),
           "--steps", str(args.steps), "--prompts", str(args.prompts), "--k", str(args.k),
           "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
           "--micro-batch", str(args.micro_batch)]
    if args.trl_path:
        cmd += ["--trl-path", str(args.trl_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MHPO_VL_CACHE": os.environ.get("MHPO_VL_CACHE", str(REPO / ".cache"))}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if result_file.exists():
        result = json.loads(result_file.read_text())
    else:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        result = {"config": config, "steps": [], "error": f"exit code {proc.returncode}"
                  + (f": {tail[-1].strip()}" if tail else "")}
    result["log"] = str(log)
    result["wall_s"] = wall
    return result


def progress(config: str, repeat: int, result: dict) -> None:
    if result.get("error"):
        what = f"FAILED ({first_line(result['error'])}; log {result['log']})"
    else:
        steps = ", ".join(f"{s['seconds']:.2f}" for s in result["steps"])
        what = f"steps {steps} s; peak RSS {result['peak_rss_gb']:.2f} GB; set-up {result['setup_s']:.1f} s"
    print(f"[peer_trl] {config} repeat {repeat}: {what} ({result['wall_s']:.0f} s wall)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=64,
                        help="rows per forward/backward (update) and per no-grad old-logprob forward, both trainers; "
                             "capped at prompts x k / 2")
    parser.add_argument("--trl-path", default=None, help="a --target dir holding trl, put first on sys.path of the "
                                                         "TRL processes (default: trl importable as installed)")
    parser.add_argument("--log-dir", default=None, help="child logs and results (default: a new temporary folder, kept)")
    parser.add_argument("--json", default=None, help="also write the final JSON here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.micro_batch = min(args.micro_batch, args.prompts * args.k // 2)
    if args.child:
        child_main(args)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = model_folder()  # built (or found) once, before any timed process; every config loads this folder
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="peer_trl_logs_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"[peer_trl] model {folder}; logs in {log_dir}", file=sys.stderr, flush=True)
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for repeat in range(1, args.repeats + 1):
        for config in configs:  # alternating, so drift in machine load hits every config alike
            try:
                result = run_child(args, config, repeat, log_dir)
            except subprocess.TimeoutExpired:
                result = {"config": config, "steps": [], "error": f"timed out after {args.timeout:.0f} s",
                          "log": str(log_dir / f"{config}.r{repeat}.log"), "wall_s": args.timeout}
            results[config].append(result)
            progress(config, repeat, result)
    rows = [summarize(c, results[c]) for c in configs]
    ratio = ratios(rows)
    print(format_table(rows, ratio))
    summary = {"rows": rows, **ratio, "workload": {
        "prompts": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens, "steps": args.steps,
        "repeats": args.repeats, "threads": args.threads, "micro_batch": args.micro_batch,
        "optimizer_steps_per_step": 2, "rows_per_optimizer_step": args.prompts * args.k // 2, "lr": LR,
        "model": str(folder)}, "log_dir": str(log_dir), "loadavg_1min": os.getloadavg()[0]}
    line = json.dumps(summary)
    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
