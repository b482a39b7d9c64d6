"""Issue 22 item 9: a run over 2 machines, launched exactly as docs/distributed.md ("Several machines") and
configs/accelerate/multi_node.yaml tell a user to, with the 2 "machines" on this host: one launcher process per node
rank, each in a session of its own with its own environment (no RANK/WORLD_SIZE/MASTER_* inherited, its own HOME
and TMPDIR), rendezvous on 127.0.0.1, 1 process per node (CPU, gloo), DeepSpeed ZeRO-2. Both nodes write
`trainer.output_dir` at the same path: the shared filesystem the docs require for checkpoints.

Run A (uninterrupted) uses the accelerate form (`accelerate launch --config_file configs/accelerate/multi_node.yaml
--machine_rank i --main_process_ip ...`), run B the torchrun form (`torchrun --nnodes 2 --node_rank i ...`): after
B's step-2 checkpoint node 1 is lost (SIGKILL to its launcher's process group and every process under it, as a
machine that dies), node 0 must end by itself within a bounded time, and the same two commands rerun resume from
step 2 and end with A's rows (sampled rewards exactly, losses to float error): the two documented commands give
the same run and a lost node costs no finished checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SURVIVOR_EXIT_S = 60  # a lost peer fails the survivor's next gloo collective at once (connection reset), not after
# trainer.collective_timeout_s (30 min by default): the bound is for start-up noise on 2 shared cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(node_dir: Path) -> dict[str, str]:
    """The environment of a separate machine: the test session's, minus anything a launcher or an outer
    distributed job set, with its own HOME and TMPDIR."""
    from run_helpers import RUN_ENV

    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK",
            "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in RUN_ENV.items()
           if k not in drop and not k.startswith(("TORCHELASTIC_", "ACCELERATE_", "PET_"))}
    (node_dir / "home").mkdir(parents=True, exist_ok=True)
    (node_dir / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(node_dir / "home"), TMPDIR=str(node_dir / "tmp"))
    return env


def _torchrun(node: int, port: int) -> list[str]:
    # torchrun --nnodes 2 --node_rank $i --nproc_per_node 8 --master_addr $NODE0 --master_port 29500 -m mhpo_vl.cli
    # (docs/distributed.md); 1 process per node here. `python -m torch.distributed.run` is what `torchrun` runs.
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]


def _accelerate(node: int, port: int) -> list[str]:
    # accelerate launch --config_file configs/accelerate/multi_node.yaml --machine_rank $i --main_process_ip $NODE0
    # (docs/distributed.md); num_processes is the total over the machines (16 in the file: 8 GPUs each), 2 here.
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / "multi_node.yaml"), "--num_processes", "2",
            "--machine_rank", str(node), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]


class Nodes:
    """Two node launchers of one run, each started as on its own machine."""

    def __init__(self, launcher, train_args: list[str], root: Path, name: str):
        port = _free_port()
        self.logs = [root / f"{name}.node{i}.log" for i in range(2)]
        self.procs = []
        for i in range(2):
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    [*launcher(i, port), "-m", "mhpo_vl.cli", "train", *train_args], cwd=REPO,
                    env=_node_env(root / f"node{i}"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs)

    def lose(self, node: int) -> None:
        """The machine dies: SIGKILL to the launcher's process group and to every process under it (torchrun
        starts each rank in a session of its own, so the group alone would miss the rank)."""
        import psutil

        proc = self.procs[node]
        everything = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGKILL)
        for p in everything:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.wait()

    def wait(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]

    def cleanup(self) -> None:
        import psutil

        for proc in self.procs:
            if proc.poll() is None:
                for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                    try:
                        p.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        pass
                proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_as_documented_lose_a_node_and_resume(tmp_path, warm_tiny_vl_model_dir):
    import psutil
    from run_helpers import assert_resumed_run_matches, read_metrics, small_overrides

    config = tmp_path / "c.yaml"
    config.write_text("{}\n")

    def train_args(out: Path) -> list[str]:
        return ["--config", str(config), *small_overrides(
            warm_tiny_vl_model_dir, out, **{"rollout.backend": "hf", "trainer.deepspeed": "configs/deepspeed/zero2.json",
                                            "trainer.micro_batch_size": "2"})]

    a, b = tmp_path / "shared" / "a", tmp_path / "shared" / "b"
    started = time.time()

    # A: uninterrupted, the accelerate form.
    nodes = Nodes(_accelerate, train_args(a), tmp_path, "a")
    try:
        assert nodes.wait(400) == [0, 0], nodes.tails()
    finally:
        nodes.cleanup()

    # B: the torchrun form; node 1 is lost after the step-2 checkpoint.
    index = b / "checkpoints" / "index.json"
    nodes = Nodes(_torchrun, train_args(b), tmp_path, "b1")
    try:
        deadline = time.time() + 300
        while not (index.exists() and json.loads(index.read_text()).get("latest") == "step_000002"):
            assert time.time() < deadline and all(p.poll() is None for p in nodes.procs), nodes.tails()
            time.sleep(0.1)
        survivor = [psutil.Process(nodes.procs[0].pid), *psutil.Process(nodes.procs[0].pid).children(recursive=True)]
        nodes.lose(1)
        lost_at = time.time()
        rc0 = nodes.procs[0].wait(timeout=SURVIVOR_EXIT_S + 30)
        took = time.time() - lost_at
    finally:
        nodes.cleanup()
    print(f"node 0 exited (rc {rc0}) {took:.1f} s after node 1 was killed")
    assert rc0 != 0, nodes.tails()
    assert took <= SURVIVOR_EXIT_S, (took, nodes.tails())
    def alive():  # the rank and its grading workers (daemons of the rank; their forkserver follows it out)
        found = []
        for p in survivor:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    deadline = time.time() + 20
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(), f"processes of node 0 outlived its launcher: {alive()}"
    # Both nodes wrote into the one checkpoint folder: rank 0 the model and state, each rank its optimizer shard.
    ckpt = b / "checkpoints" / "step_000002"
    assert sorted(p.name for p in (ckpt / "deepspeed" / "state").glob("*optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
    assert (ckpt / "model.safetensors").exists() and (ckpt / "manifest.json").exists()
    assert max(r["step"] for r in read_metrics(b)) in (2, 3)

    # The same command on both nodes resumes from step 2 and ends as A did.
    nodes = Nodes(_torchrun, train_args(b), tmp_path, "b2")
    try:
        assert nodes.wait(400) == [0, 0], nodes.tails()
    finally:
        nodes.cleanup()
    assert "resuming from" in nodes.logs[0].read_text(), nodes.tails()
    assert_resumed_run_matches(a, b, resumed_from_step=2, steps=4)
    print(f"3 two-node launches in {time.time() - started:.0f} s")


def test_the_docs_give_the_commands_this_file_runs():
    """The commands above are the ones docs/distributed.md ("Several machines") and the multi-node accelerate config
    give; a change there should come with a change here."""
    import yaml

    doc = (REPO / "docs" / "distributed.md").read_text()
    assert "torchrun --nnodes 2 --node_rank $i --nproc_per_node 8 --master_addr $NODE0 --master_port 29500" in doc
    assert "accelerate launch --config_file configs/accelerate/multi_node.yaml --machine_rank $i" in doc
    assert "--main_process_ip $NODE0 -m mhpo_vl.cli train" in doc
    assert "tests/test_multi_node.py" in doc
    cfg = yaml.safe_load((REPO / "configs" / "accelerate" / "multi_node.yaml").read_text())
    assert cfg["num_machines"] == 2 and cfg["rdzv_backend"] == "static", cfg
