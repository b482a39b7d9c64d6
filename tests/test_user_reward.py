"""`reward.function: path/to/file.py:name`: the config check (before any model loads), the function run in the
grader's worker processes with the per-answer timeout, failures counted / logged by row id / neutral / stopping
the run after N in a row, the shipped example end to end (2 RL steps, HF sampler, tiny model)."""
from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
from run_helpers import REPO, read_metrics, small_overrides

from mhpo_vl.config import ConfigError, load_config
from mhpo_vl.grading.user_reward import RewardFunctionError, UserRewardFunction, parse_spec
from mhpo_vl.types import Sample

EXAMPLE = REPO / "examples" / "rewards" / "answer_and_length.py"
SPEC = "examples/rewards/answer_and_length.py:answer_and_length"


def example_function():
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        from answer_and_length import answer_and_length
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    return answer_and_length


def sample(i: str, answer: str = "2", **metadata) -> Sample:
    return Sample(id=i, source="t", split="train", question=f"question {i}", answer=answer, answer_type="integer",
                  metadata=metadata)


def write(tmp_path: Path, body: str, name: str = "my_reward.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# ------------------------------------------------------------------------------------------ config check -----


def test_config_check_reads_the_file_and_names_the_key(tmp_path):
    assert load_config(None, [f"reward.function={SPEC}"]).reward.function == SPEC
    assert parse_spec("a/b.py") == (Path("a/b.py"), "main")  # EasyR1: no ":name" means main
    with pytest.raises(ConfigError, match=r"^reward.function=nowhere.py:f: nowhere.py: no such file$"):
        load_config(None, ["reward.function=nowhere.py:f"])
    path = write(tmp_path, """
        import math
        def score(sample, response):
            return 1.0
        def helper():
            pass
        LIMIT = 3
    """)
    with pytest.raises(ConfigError, match=r"reward.function=.*my_reward.py:compute_score: .*my_reward.py defines no "
                                          r"'compute_score' at its top level \(functions there: helper, score\)"):
        load_config(None, [f"reward.function={path}:compute_score"])
    for name in ("score", "LIMIT", "math"):  # a def, an assignment, an import: bound names; nothing was run
        assert load_config(None, [f"reward.function={path}:{name}"]).reward.function.endswith(name)
    with pytest.raises(ConfigError, match=r"my_reward.py defines no 'main'"):
        load_config(None, [f"reward.function={path}"])
    broken = write(tmp_path, "def f(sample, response):\n    return (\n", "broken.py")
    with pytest.raises(ConfigError, match=r"reward.function=.*broken.py:f: .*broken.py, line \d+: invalid Python"):
        load_config(None, [f"reward.function={broken}:f"])
    with pytest.raises(ConfigError, match=r"not a .py file"):
        load_config(None, [f"reward.function={tmp_path}/x.txt:f".replace("x.txt", write(tmp_path, "", "x.txt").name)])
    with pytest.raises(ConfigError, match=r"reward.max_consecutive_failures must be >= 1, got 0"):
        load_config(None, ["reward.max_consecutive_failures=0"])


def test_the_config_error_comes_before_any_model_loads(tmp_path):
    """From the command line: one line naming the key, exit code 2, no model or engine started."""
    import subprocess

    from run_helpers import RUN_ENV

    done = subprocess.run([sys.executable, "-m", "mhpo_vl.cli", "train", "--config", str(REPO / "configs" / "demo_cpu.yaml"),
                           f"trainer.output_dir={tmp_path / 'run'}", "reward.function=examples/rewards/nope.py:f"],
                          cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("mhpo-vl train: error: reward.function=examples/rewards/nope.py:f: "
                                                    "examples/rewards/nope.py: no such file  (--verbose shows the "
                                                    "traceback)")
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------- the workers -----


def test_the_example_runs_in_the_workers_and_reports_components():
    samples = [sample("p1"), sample("p1"), sample("p2", answer="5", max_chars=10)]
    responses = ["<think>1+1</think> \\boxed{2}", "\\boxed{3}", "<think>x</think> the answer is \\boxed{5}"]
    fn = UserRewardFunction(SPEC, num_workers=1, timeout_s=10)
    try:
        out = fn(samples, responses, truncated=[False, False, True])  # no truncated_reward set: flags unused
        totals = fn.pop_component_totals()
        assert fn.pop_component_totals() == {}  # popped
    finally:
        fn.close()
    local = example_function()
    expected = [local(s, r) for s, r in zip(samples, responses)]
    assert out.rewards == [e["score"] for e in expected]
    # by hand: right + formatted - 0.1 * 28/2000; wrong, unformatted - 0.1 * 9/2000; right + formatted - 0.1 (over budget)
    assert out.rewards == pytest.approx([1.1 - 0.1 * 28 / 2000, -0.1 * 9 / 2000, 1.0], abs=1e-12)
    assert [v.correct for v in out.verdicts] == [True, False, True]
    assert [v.format_ok for v in out.verdicts] == [True, False, True]
    assert [v.prediction for v in out.verdicts] == ["2", "3", "5"]
    assert totals == {"accuracy": (2.0, 3.0), "length_cost": pytest.approx((0.1 * 37 / 2000 + 0.1, 3.0))}
    assert out.metrics()["reward/grading_errors"] == 0 and out.metrics()["reward/timeouts"] == 0


def test_a_float_result_is_graded_by_the_built_in_grader_and_truncated_reward_applies(tmp_path):
    path = write(tmp_path, """
        def length(sample, response):
            return len(response) / 100
    """)
    fn = UserRewardFunction(f"{path}:length", num_workers=1, timeout_s=10, require_think=False, truncated_reward=-1.0)
    try:
        out = fn([sample("a"), sample("a")], ["\\boxed{2}", "\\boxed{7}"], truncated=[False, True])
    finally:
        fn.close()
    assert out.rewards == [0.09, -1.0]
    assert [v.correct for v in out.verdicts] == [True, False]  # correctness from the built-in grader
    assert [v.format_ok for v in out.verdicts] == [True, True]  # require_think=False: a \boxed{} answer


def test_failures_are_counted_logged_by_row_neutral_and_stop_after_n_in_a_row(tmp_path, caplog):
    path = write(tmp_path, """
        import time

        def check(text):
            if "boom" in text:
                raise ValueError(f"cannot score {text!r}")

        def flaky(sample, response):
            check(response)
            if "sleep" in response:
                time.sleep(30)
            if "text" in response:
                return "0.5"
            return {"score": float(len(response)), "correct": True, "chars": len(response)}
    """)
    fn = UserRewardFunction(f"{path}:flaky", num_workers=2, timeout_s=1.0, max_consecutive_failures=4)
    caplog.set_level(logging.WARNING, logger="mhpo_vl.grading.user_reward")
    try:
        a, b, c = sample("a"), sample("b"), sample("c")
        out = fn([a, a, a, b, b, c], ["xy", "boom", "wxyz", "sleep", "text", "boom"])
        # a#1 raised: the mean of a's other rows (2 and 4), a neutral 3 (advantage 0), never a silent 0; b#0 timed
        # out and b#1 returned a string: b has no row to take a mean of, so 0; c#0 raised, alone: 0.
        assert out.rewards == [2.0, 3.0, 4.0, 0.0, 0.0, 0.0]
        assert [v.correct for v in out.verdicts] == [True, False, True, False, False, False]
        assert [v.timed_out for v in out.verdicts] == [False, False, False, True, False, False]
        assert out.metrics()["reward/timeouts"] == 1 and out.metrics()["reward/grading_errors"] == 3
        assert (fn.failures_total, fn.failures_in_a_row) == (4, 3)  # b#0, b#1, c#0 after the success at a#2
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 4
        assert any("row a#1" in m and "ValueError: cannot score 'boom' (at my_reward.py:6, in check)" in m
                   for m in messages), messages
        assert any("row b#0" in m and "timed out after 1 s" in m for m in messages), messages
        assert any("row b#1" in m and "the returned reward must be a number, got '0.5' (str)" in m for m in messages)
        assert fn.pop_component_totals() == {"chars": (6.0, 2.0)}
        # the 4th in a row: the error names the count, the limit, the row and the last line of the traceback
        with pytest.raises(RewardFunctionError, match=r"failed on 4 responses in a row \(reward.max_consecutive_"
                                                      r"failures=4\); the last, row d#0: ValueError: cannot score "
                                                      r"'boom' \(at my_reward.py:6, in check\)"):
            fn([sample("d")], ["boom"])
    finally:
        fn.close()


def test_timeouts_in_a_row_stop_too(tmp_path):
    path = write(tmp_path, """
        import time
        def slow(sample, response):
            time.sleep(30)
            return 1.0
    """)
    fn = UserRewardFunction(f"{path}:slow", num_workers=2, timeout_s=0.5, max_consecutive_failures=2)
    try:
        with pytest.raises(RewardFunctionError, match=r"failed on 2 responses in a row .* row a#1: timed out after "
                                                      r"0.5 s"):
            fn([sample("a")] * 4, ["x"] * 4)
    finally:
        fn.close()


def test_a_file_that_fails_to_import_is_an_error_before_training(tmp_path):
    path = write(tmp_path, """
        import json
        SETTINGS = json.loads("{not json")
        def score(sample, response):
            return 1.0
    """)
    with pytest.raises(RewardFunctionError, match=r"reward.function=.*:score: importing it failed: json.decoder.JSONDecodeError: "
                                                  r".*\(at my_reward.py:3, in <module>\)"):
        UserRewardFunction(f"{path}:score", num_workers=1, timeout_s=5)
    value = write(tmp_path, "score = 3\n", "value.py")
    with pytest.raises(RewardFunctionError, match=r"value.py: score is int, not a function"):
        UserRewardFunction(f"{value}:score", num_workers=1, timeout_s=5)


# ------------------------------------------------------------------------------------------- end to end -----


@pytest.mark.slow
def test_the_example_reward_trains_two_steps(tmp_path, tiny_vl_model_dir):
    """`reward.function=examples/rewards/answer_and_length.py:answer_and_length` through build_trainer and fit: the
    function's components are logged per step and per validation, and the validation samples carry its rewards."""
    from mhpo_vl.train import build_trainer

    out = tmp_path / "run"
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, out, **{
        "rollout.backend": "hf", "rollout.max_tokens": "12", "trainer.total_steps": "2", "trainer.val_every": "1",
        "trainer.save_every": "0", "trainer.val_samples_to_log": "3", "reward.function": SPEC}))
    trainer = build_trainer(cfg)
    assert type(trainer.reward_fn).__name__ == "UserRewardFunction"
    val_samples = {s.id: s for s in trainer.val_samples}
    summary = trainer.fit()
    assert summary["steps"] == 2
    rows = [r for r in read_metrics(out) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    local = example_function()
    for r in rows:
        assert r["reward/grading_errors"] == 0 and r["reward/timeouts"] == 0
        # a random tiny model writes no right answer: accuracy 0, so every reward is minus its length cost
        assert r["reward/fn/accuracy"] == r["reward/accuracy"] == 0.0
        assert 0 < r["reward/fn/length_cost"] <= 0.1
        assert r["reward/mean"] == pytest.approx(-r["reward/fn/length_cost"], abs=1e-9)
        assert 0 < r["val/reward/fn/length_cost"] <= 0.1
    for step in (0, 1, 2):
        logged = [json.loads(line) for line in (out / "samples" / f"step_{step:06d}.jsonl").read_text().splitlines()]
        assert [row["index"] for row in logged] == [0, 1, 2]
        for row in logged:  # the reward the worker computed equals the function's, here, on the same text
            assert row["reward"] == local(val_samples[row["prompt_id"]], row["response"])["score"]


@pytest.mark.slow
def test_a_failing_reward_is_counted_and_a_broken_one_stops_the_run(tmp_path, tiny_vl_model_dir, caplog):
    """A reward that raises on some prompts: each step counts exactly their rows (rollout.n per drawn prompt) in
    reward/grading_errors and the run finishes; one that raises always stops the run at the first validation after
    reward.max_consecutive_failures rows, naming the row."""
    from mhpo_vl.train import build_trainer
    from mhpo_vl.train.data_order import PromptOrder

    path = write(tmp_path, """
        def picky(sample, response):
            if int(sample.id.rsplit("-", 1)[-1]) % 3 == 0:
                raise KeyError(sample.id)
            return {"score": 0.5, "correct": False}
    """)
    out = tmp_path / "run"
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, out, **{
        "rollout.backend": "hf", "trainer.total_steps": "2", "trainer.val_every": "0", "trainer.save_every": "0",
        "trainer.val_before_train": "false", "reward.function": f"{path}:picky"}))
    trainer = build_trainer(cfg)
    order = PromptOrder(len(trainer.train_samples), 4, seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    drawn = [[trainer.train_samples[i].id for i in order.next_batch()] for _ in range(2)]
    failing = [sum(int(i.rsplit("-", 1)[-1]) % 3 == 0 for i in ids) for ids in drawn]
    assert any(failing) and not all(f == 4 for f in failing), (drawn, "pick a data seed that tests something")
    trainer.fit()
    rows = [r for r in read_metrics(out) if "reward/mean" in r]
    assert [r["reward/grading_errors"] for r in rows] == [4.0 * f for f in failing]
    # a failed row takes its group's mean: here all 4 rows of a failing prompt failed, so 0
    assert [r["reward/mean"] for r in rows] == [0.5 * (4 - f) / 4 for f in failing]

    always = write(tmp_path, "def broken(sample, response):\n    return sample.metadata['missing']\n", "broken.py")
    cfg = load_config(None, small_overrides(tiny_vl_model_dir, tmp_path / "run2", **{
        "rollout.backend": "hf", "trainer.total_steps": "2", "reward.function": f"{always}:broken",
        "reward.max_consecutive_failures": "5"}))
    caplog.set_level(logging.WARNING, logger="mhpo_vl.grading.user_reward")
    with pytest.raises(RewardFunctionError, match=r"failed on 5 responses in a row .* row .*#\d: KeyError: 'missing' "
                                                  r"\(at broken.py:2, in broken\)"):
        build_trainer(cfg).fit()
    broken_rows = [r.getMessage() for r in caplog.records if "(at broken.py:2, in broken)" in r.getMessage()]
    assert len(broken_rows) == 5 and all("reward.function failed on row geosynth-val-" in m for m in broken_rows)
