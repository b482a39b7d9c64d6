"""The process-pool grader: hard per-answer timeouts, dead workers, threads, and the combined reward."""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from grading_crash_helpers import CRASH, SLOW, grade_or_crash

from mhpo_vl.grading import Grader, RewardFunction, grade_one
from mhpo_vl.grading.pool import HardTimeoutPool
from mhpo_vl.types import Sample

# sympy's verify of 9^(9^(9^9)) against 5 tries to build a ~370-million-digit integer and then a tower on top of it:
# it does not finish (observed: still running after 20 s), and sits in C code where no signal reaches it.
HANGING_RESPONSE = "\\boxed{9^{9^{9^{9}}}}"
TIMEOUT_S = 2.0


def _sample(answer: str, answer_type: str = "expression", **kw) -> Sample:
    return Sample(id="t", source="test", split="test", question="q", answer=answer, answer_type=answer_type, **kw)


@pytest.fixture(scope="module")
def grader():
    with Grader(num_workers=2, timeout_s=TIMEOUT_S) as g:
        g.grade([_sample("1")], ["\\boxed{1}"])  # workers up and warm before any timing
        yield g


def _grade_one_in_child(queue):
    queue.put(grade_one(_sample("5"), HANGING_RESPONSE).correct)


@pytest.mark.slow
def test_the_hanging_case_really_hangs_without_the_pool():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_grade_one_in_child, args=(queue,), daemon=True)
    child.start()
    child.join(3 * TIMEOUT_S + 5)  # start-up (~2 s) plus well past the pool's timeout
    still_running = child.is_alive()
    child.kill()
    child.join()
    assert still_running, "the adversarial answer finished: pick a harder one, the timeout test proves nothing"


def test_hanging_sympy_costs_one_timeout_and_the_batch_goes_on(grader):
    samples = [_sample("5"), _sample("5"), _sample("\\frac{1}{2}"), _sample("5")]
    responses = ["\\boxed{5}", HANGING_RESPONSE, "\\boxed{0.5}", "\\boxed{6}"]
    timeouts_before = grader.num_timeouts
    started = time.monotonic()
    verdicts = grader.grade(samples, responses)
    elapsed = time.monotonic() - started
    # The timeout plus three quick answers and a worker respawn, with slack for a 2-core machine shared by other jobs
    # (a hung answer without the pool never returns at all).
    assert elapsed < TIMEOUT_S + 3.0, f"grading took {elapsed:.1f} s with a {TIMEOUT_S} s timeout"
    assert [v.correct for v in verdicts] == [True, False, True, False]
    hung = verdicts[1]
    assert hung.timed_out and hung.error == f"timed out after {TIMEOUT_S:g} s"
    assert hung.prediction == "9^{9^{9^{9}}}"  # extracted in the parent, so a timeout still says what was answered
    assert not any(v.timed_out for i, v in enumerate(verdicts) if i != 1)
    assert grader.num_timeouts == timeouts_before + 1
    # The killed worker was replaced: the next batch is graded normally.
    assert [v.correct for v in grader.grade([_sample("7")] * 2, ["\\boxed{7}", "\\boxed{8}"])] == [True, False]


def test_grading_from_a_non_main_thread_gives_real_verdicts(grader):
    out = []

    def work():
        out.append(grader.grade([_sample("\\frac{14}{3}"), _sample("90^\\circ")], ["\\boxed{14/3}", "\\boxed{90}"]))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert [v.correct for v in out[0]] == [True, True]
    assert all(v.error is None for v in out[0])


def test_format_is_judged_on_the_whole_response(grader):
    long_thought = "<think>" + "x" * 100_000 + "</think> so \\boxed{3}"  # longer than the tail the worker sees
    [verdict] = grader.grade([_sample("3")], [long_thought])
    assert verdict.correct and verdict.format_ok


def test_grade_rejects_mismatched_lengths(grader):
    with pytest.raises(ValueError, match="2 samples but 1 responses"):
        grader.grade([_sample("1"), _sample("2")], ["\\boxed{1}"])


def test_pool_reports_exceptions_timeouts_and_dead_workers():
    # Builtins as tasks: picklable by reference, no sympy needed.
    with HardTimeoutPool(num_workers=2, timeout_s=0.5) as pool:
        results = pool.map(math.sqrt, [(16,), (-1,)])
        assert results[0].value == 4.0 and results[0].error is None
        assert results[1].error == "ValueError: math domain error"
        started = time.monotonic()
        [slow, fast] = pool.map(time.sleep, [(30,), (0,)])
        assert time.monotonic() - started < 3
        assert slow.timed_out and not fast.timed_out and fast.error is None
        [died] = pool.map(os._exit, [(3,)])  # every attempt kills its worker: retried twice, then an error
        assert died.error == "worker died (exit code 3) on each of 3 attempts" and not died.timed_out
        assert died.worker_died and died.attempts == 3
        assert pool.num_worker_deaths == 3 and pool.num_retries == 2 and pool.num_timeouts == 1
        assert [r.value for r in pool.map(abs, [(-2,), (-3,), (-4,)])] == [2, 3, 4]


def _die_the_first_time(marker: str, value: int) -> int:
    """Kills its worker (a real death, no exception) unless ``marker`` exists; creates it first."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(5)
    return value * 10


def test_a_task_whose_worker_died_runs_again_in_another():
    # Before: the dead worker's task came back as "worker died (exit code 5)", its value lost.
    with HardTimeoutPool(num_workers=1, timeout_s=30.0) as pool, tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "died-once")
        results = pool.map(_die_the_first_time, [(marker, 1), (marker, 2), (marker, 3)])
        assert [r.value for r in results] == [10, 20, 30] and all(r.error is None for r in results)
        assert [r.attempts for r in results] == [2, 1, 1]
        assert pool.num_worker_deaths == 1 and pool.num_retries == 1 and pool.num_failed_tasks == 0
    with HardTimeoutPool(num_workers=1, timeout_s=30.0, retries_after_death=0) as pool, \
            tempfile.TemporaryDirectory() as tmp:
        [result] = pool.map(_die_the_first_time, [(os.path.join(tmp, "m"), 1)])
        assert result.worker_died and result.error == "worker died (exit code 5) on each of 1 attempt"
    with pytest.raises(ValueError, match="retries_after_death must be >= 0, got -1"):
        HardTimeoutPool(num_workers=1, retries_after_death=-1)


def test_grader_workers_killed_mid_batch_cost_no_verdict(monkeypatch):
    # Before: both killed answers came back wrong ("worker died (exit code -9)"), as in the issue-22 probe.
    monkeypatch.setattr("mhpo_vl.grading.grader._grade_task", grade_or_crash)
    killed: list[int] = []
    with Grader(num_workers=2, timeout_s=20.0) as g:
        g.grade([_sample("1")], ["\\boxed{1}"])  # both workers up
        workers = g._pool._workers

        def kill_both_while_busy():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(w.task is not None for w in list(workers)):
                time.sleep(0.01)
            time.sleep(0.1)  # inside the 0.6 s of grading
            for w in list(workers):
                if w.task is not None:
                    os.kill(w.process.pid, signal.SIGKILL)
                    killed.append(w.process.pid)

        killer = threading.Thread(target=kill_both_while_busy)
        killer.start()
        verdicts = g.grade([_sample(str(k)) for k in range(6)], [f"{SLOW} \\boxed{{{k}}}" for k in range(6)])
        killer.join()
        deaths = g.num_worker_deaths
    assert len(killed) == 2
    assert [v.correct for v in verdicts] == [True] * 6 and all(v.error is None for v in verdicts)
    assert deaths == 2


def test_an_answer_that_always_kills_its_worker_is_a_grading_error(monkeypatch):
    monkeypatch.setattr("mhpo_vl.grading.grader._grade_task", grade_or_crash)
    samples = [_sample("4"), _sample("4"), _sample("\\frac{1}{2}"), _sample("4")]
    responses = ["\\boxed{4}", f"{CRASH} \\boxed{{4}}", "\\boxed{0.5}", "\\boxed{5}"]
    with Grader(num_workers=2, timeout_s=20.0) as g:
        out = RewardFunction(g)(samples, responses)
        deaths = g.num_worker_deaths
    crashed = out.verdicts[1]
    assert crashed.error == "worker died (exit code 11) on each of 3 attempts"
    assert crashed.grading_failed and not crashed.timed_out and not crashed.correct and crashed.prediction == "4"
    assert [v.correct for i, v in enumerate(out.verdicts) if i != 1] == [True, True, False]
    assert all(v.error is None for i, v in enumerate(out.verdicts) if i != 1)
    assert deaths == 3  # the first attempt and two retries
    metrics = out.metrics()
    assert metrics["reward/grading_errors"] == 1.0 and metrics["reward/timeouts"] == 0.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_busy_workers_die_with_a_killed_owner():
    # Before this was handled, a worker busy on a task outlived its SIGKILLed owner forever (a spinning orphan).
    code = (
        "import time\nfrom mhpo_vl.grading.pool import HardTimeoutPool\n"
        "pool = HardTimeoutPool(1, 1000.0)\n"
        "print(pool._workers[0].process.pid, flush=True)\n"
        "pool.map(time.sleep, [(1000,)])\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    worker_pid = int(owner.stdout.readline())
    time.sleep(3)  # the worker is up and inside time.sleep(1000)
    assert _alive(worker_pid)
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)


# ---------------------------------------------------------------------------------------------------- reward --


def test_reward_is_weighted_accuracy_plus_format(grader):
    samples = [_sample("4")] * 4
    responses = [
        "<think>2+2</think> \\boxed{4}",  # right, formatted: 0.9*1 + 0.1*1 = 1.0
        "\\boxed{4}",  # right, no think: 0.9
        "<think>2+2</think> \\boxed{5}",  # wrong, formatted: 0.1
        "four",  # nothing: 0
    ]
    out = RewardFunction(grader)(samples, responses)
    assert out.rewards == pytest.approx([1.0, 0.9, 0.1, 0.0])
    assert out.accuracy == [1.0, 1.0, 0.0, 0.0] and out.format == [1.0, 0.0, 1.0, 0.0]
    assert out.metrics()["reward/accuracy"] == 0.5 and out.metrics()["reward/format"] == 0.5
    # Accuracy only: weights (1, 0).
    assert RewardFunction(grader, accuracy_weight=1.0, format_weight=0.0)(samples, responses).rewards == [1.0, 1.0, 0.0, 0.0]


def test_truncated_responses_get_the_truncated_reward(grader):
    samples = [_sample("4")] * 3
    responses = ["<think>2+2</think> \\boxed{4}", "<think>2+2</think> \\boxed{4} and then more and more", "\\boxed{5}"]
    cut = [False, True, True]
    # Off by default: flags change nothing.
    assert RewardFunction(grader)(samples, responses, truncated=cut).rewards == pytest.approx([1.0, 1.0, 0.0])
    out = RewardFunction(grader, truncated_reward=-0.5)(samples, responses, truncated=cut)
    assert out.rewards == pytest.approx([1.0, -0.5, -0.5])
    assert out.accuracy == [1.0, 1.0, 0.0]  # the verdicts (and accuracy metrics) are the grader's
    with pytest.raises(ValueError, match="2 truncated flags for 3 responses"):
        RewardFunction(grader, truncated_reward=0.0)(samples, responses, truncated=cut[:2])


def test_reward_weights_are_validated(grader):
    with pytest.raises(ValueError, match="both 0"):
        RewardFunction(grader, accuracy_weight=0, format_weight=0)
    with pytest.raises(ValueError, match=">= 0"):
        RewardFunction(grader, accuracy_weight=-1)


def test_format_not_required_for_models_without_think():
    with Grader(num_workers=1, timeout_s=TIMEOUT_S, require_think=False) as plain:
        out = RewardFunction(plain, accuracy_weight=0.5, format_weight=0.5)(
            [_sample("4", "integer")] * 2, ["The sum is \\boxed{4}.", "The sum is 4."]
        )
    # "\boxed{4}": right (0.5) and formatted (0.5); "4": right via the last number (0.5), no box (0).
    assert out.rewards == [1.0, 0.5]
