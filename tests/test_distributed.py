"""Two processes (gloo, CPU) vs one process on the same data: identical weights on both ranks, and the same
weights and minibatch losses as the single process. Plain torch (gradients summed over ranks), DeepSpeed ZeRO-2
and ZeRO-3 (partitioned weights gathered for the chunked lm_head, the weight sync and the checkpoint). Each update
accumulates two micro-batches per rank, which is what ZeRO-3 got wrong when the forward bypassed the engine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "dist_worker.py"


def _run(out: Path, model_dir: Path, deepspeed: str, nproc: int, losses: str, micro: str = "rows") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(model_dir), deepspeed, losses, micro]
        env.pop("WORLD_SIZE", None)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + os.getpid() % 1000), str(WORKER), str(out), str(model_dir), deepspeed, losses, micro]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.parametrize("losses", ["finite", "nan"])
@pytest.mark.parametrize("deepspeed", ["none", "configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"])
def test_two_ranks_match_each_other_and_the_single_process(tmp_path, tiny_vl_model_dir, deepspeed, losses):
    """With losses="nan", rank 0's first micro-batch loss is NaN: both ranks must skip that minibatch (one rank
    stepping alone would hang the other), and the result must equal the single process skipping it."""
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    _run(single, tiny_vl_model_dir, "none", 1, losses)
    _run(double, tiny_vl_model_dir, deepspeed, 2, losses)
    one = torch.load(single / "rank0.pt")
    r0, r1 = torch.load(double / "rank0.pt"), torch.load(double / "rank1.pt")
    assert r0["world"] == r1["world"] == 2 and one["world"] == 1
    assert r0["weights"].keys() == one["weights"].keys()
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), f"ranks disagree on {name}"
    moved = 0
    for name, w in one["weights"].items():
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-4, atol=1e-6)
    start = __import__("mhpo_vl.models.policy", fromlist=["load_policy"]).load_policy(tiny_vl_model_dir, freeze_vision=True).model
    for name, p in start.named_parameters():
        if name in one["weights"] and not torch.equal(p.detach(), one["weights"][name]):
            moved += 1
    assert moved >= 0.9 * len(one["weights"])  # the updates really changed the weights
    assert len(one["losses"]) == len(r0["losses"]) == 4  # 2 steps x 2 epochs
    assert abs(one["losses"][3]) > 1e-6  # the off-policy epoch of the second update has a real loss to compare
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=1e-6,
                               equal_nan=True)
    skipped = 1 if losses == "nan" else 0
    assert one["skipped"] == r0["skipped"] == r1["skipped"] == skipped
    assert (torch.tensor(one["losses"]).isnan().tolist() == [True, False, False, False]) == (losses == "nan")
    if deepspeed == "none":  # DAPO refill where only rank 1 lacks informative groups: both ranks run its rounds
        assert one["refill"]["dynamic_sampling/refill_rounds"] == 0
        assert r0["refill"]["dynamic_sampling/refill_rounds"] == r1["refill"]["dynamic_sampling/refill_rounds"] == 2
        assert r0["order"] == r1["order"]  # the shared prompt order stayed in step


def _assert_same_update(a: dict, b: dict) -> None:
    """Same weights after the two updates and the same minibatch losses, to float error."""
    assert a["weights"].keys() == b["weights"].keys()
    for name, w in a["weights"].items():
        torch.testing.assert_close(w, b["weights"][name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-4, atol=1e-6)


def test_token_budget_micro_batches_equal_fixed_rows_in_one_process(tmp_path, tiny_vl_model_dir):
    """The same two updates with micro-batches of 2 rows and by a ~1-row token budget: the loss modules are
    normalised by the whole minibatch's counts, so the grouping must not change the losses, the weights or the
    old logprobs (returned in row order); the budget leaves less padding."""
    rows, tokens = tmp_path / "rows", tmp_path / "tokens"
    rows.mkdir(), tokens.mkdir()
    _run(rows, tiny_vl_model_dir, "none", 1, "finite", "rows")
    _run(tokens, tiny_vl_model_dir, "none", 1, "finite", "tokens")
    a, b = torch.load(rows / "rank0.pt"), torch.load(tokens / "rank0.pt")
    _assert_same_update(a, b)
    assert abs(a["losses"][3]) > 1e-6  # an off-policy minibatch with a real loss is among those compared
    for x, y in zip(a["old_logprobs"], b["old_logprobs"]):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    for (old_rows, upd_rows), (old_tok, upd_tok) in zip(a["padding"], b["padding"]):
        assert 0 <= old_tok < old_rows and 0 <= upd_tok < upd_rows


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["none", "configs/deepspeed/zero3.json"])
def test_two_ranks_with_token_budget_match_one_process_with_fixed_rows(tmp_path, tiny_vl_model_dir, deepspeed):
    """2 ranks cutting their rows by a token budget (so their micro-batch counts may differ until they agree on the
    largest: ZeRO-3 gathers parameters in every forward) vs 1 process with fixed 2-row micro-batches."""
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    _run(single, tiny_vl_model_dir, "none", 1, "finite", "rows")
    _run(double, tiny_vl_model_dir, deepspeed, 2, "finite", "tokens")
    one, r0, r1 = (torch.load(p) for p in (single / "rank0.pt", double / "rank0.pt", double / "rank1.pt"))
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), f"ranks disagree on {name}"
    _assert_same_update(one, r0)


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"])
def test_two_rank_deepspeed_run_killed_and_resumed_continues_exactly(tmp_path, warm_tiny_vl_model_dir, deepspeed):
    """`mhpo-vl train` under torchrun (2 ranks, vLLM rollouts, DeepSpeed). Run A: 4 steps uninterrupted. Run B:
    every rank SIGKILLed after the step-2 checkpoint (model folder + each rank's DeepSpeed optimizer shard), then
    the same command resumes: B's steps 3-4 equal A's."""
    from run_helpers import assert_resumed_run_matches, kill_after_checkpoint, read_metrics, run_ok, small_overrides

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    port = 29600 + os.getpid() % 300

    def command(out):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "mhpo_vl.cli", "train", "--config", str(config),
                *small_overrides(warm_tiny_vl_model_dir, out, **{"trainer.deepspeed": deepspeed,
                                                            "trainer.micro_batch_size": "2"})]

    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(command(a))
    ckpt = b / "checkpoints" / "step_000002"
    kill_after_checkpoint(command(b), b, step=2)
    assert sorted(p.name for p in (ckpt / "deepspeed" / "state").glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
    assert max(r["step"] for r in read_metrics(b)) in (2, 3)
    run_ok(command(b))
    assert_resumed_run_matches(a, b, resumed_from_step=2, steps=4)


@pytest.mark.slow
@pytest.mark.parametrize("deepspeed", ["configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"])
def test_deepspeed_steps_with_the_lr_the_schedule_sets(tmp_path, deepspeed):
    """The trainer's lr schedule writes param_groups["lr"] (Runtime.set_lr) before each update; DeepSpeed's ZeRO
    optimisers must step with it, not with the lr they were built with (1.0 here). Adam's first step moves each
    weight by lr (to within eps), so the largest change is the lr that was used."""
    script = tmp_path / "lr.py"
    script.write_text(
        "import sys, torch\n"
        "from mhpo_vl.distributed import Runtime\n"
        "torch.manual_seed(0)\n"
        "rt = Runtime(device='cpu', deepspeed_config=sys.argv[1])\n"
        "model = torch.nn.Linear(8, 8)\n"
        "rt.prepare(model, torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0))\n"
        "x = torch.randn(4, 8)\n"
        "for lr in (0.0, 0.01):\n"
        "    rt.set_lr(lr)\n"
        "    before = {n: t.detach().clone() for n, t in rt.iter_full_weights()}\n"
        "    rt.backward(rt.model(x).pow(2).sum(), True)\n"
        "    rt.step()\n"
        "    after = dict(rt.iter_full_weights())\n"
        "    print('MAXDELTA', max(float((after[n] - before[n]).abs().max()) for n in before))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), deepspeed], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    deltas = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("MAXDELTA")]
    assert deltas[0] == 0.0 and deltas[1] == pytest.approx(0.01, rel=1e-4), deltas


# ------------------------------------------------------- issue 22: a stopped rank, 2 nodes, preemption -------


def _rank_processes(launcher_pid: int) -> dict[int, "psutil.Process"]:  # noqa: F821
    """The rank workers under a torchrun launcher, by their RANK (read from each process's environment)."""
    import psutil

    found = {}
    for p in psutil.Process(launcher_pid).children(recursive=True):
        try:
            rank = p.environ().get("RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and "mhpo_vl.cli" in " ".join(p.cmdline()):
            found[int(rank)] = p
    return found


def _wait_for(predicate, timeout: float, what: str) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _hf_overrides(model_dir: Path, out: Path, **extra: str) -> list[str]:
    from run_helpers import small_overrides

    return small_overrides(model_dir, out, **{"rollout.backend": "hf", **extra})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stopped_rank_ends_both_ranks_within_the_collective_timeout(tmp_path, tiny_vl_model_dir):
    """Item 8: SIGSTOP rank 1 of 2 (gloo) after step 1; with trainer.collective_timeout_s=20 rank 0's next
    collective fails after 20 s with an error naming rank 1, and the launcher ends both (torch's default was 30 min)."""
    import signal
    import time

    from run_helpers import RUN_ENV

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29300 + os.getpid() % 100), "-m", "mhpo_vl.cli", "train", "--config", str(config),
               *_hf_overrides(tiny_vl_model_dir, out, **{"trainer.total_steps": "50", "trainer.save_every": "0",
                                                          "trainer.val_every": "0",
                                                          "trainer.collective_timeout_s": "20"})]
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen(command, cwd=REPO, env=RUN_ENV, stdout=log, stderr=subprocess.STDOUT)
    ranks = {}
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and '"step": 1, "reward/mean"' in metrics.read_text(), 240, "step 1")
        ranks = _rank_processes(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        ranks[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        rc = proc.wait(timeout=20 + 60)
        took = time.time() - stopped
    finally:
        for p in ranks.values():  # a stopped process only dies of SIGKILL
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    text = (tmp_path / "launcher.log").read_text() + "".join(
        p.read_text(errors="replace") for p in (out / "logs").glob("*") if p.is_file())
    print(f"both ranks ended {took:.1f} s after rank 1 was stopped (timeout 20 s)")
    assert rc != 0
    assert 20 <= took <= 20 + 45, took
    assert "rank 0: an all-reduce did not complete within trainer.collective_timeout_s=20 s: rank 1 stopped " \
           "answering" in text or "rank 1 stopped answering" in text, text[-3000:]
    assert not any(p.is_running() and p.status() != "zombie" for p in ranks.values())
