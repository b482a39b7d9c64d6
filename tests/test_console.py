"""The console (mhpo_vl/runs/console.py): library output of every kind goes to the run's log, the package's own lines
stay on the terminal, errors surface in full; and a real short `mhpo-vl train` prints a few dozen lines."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from run_helpers import REPO, RUN_ENV, small_overrides

# Writes through every channel a library uses: C-level writes to fds 1 and 2, print, logging, warnings, and a child
# process; our own lines through console.line / console.progress. Optionally fails at the end.
_SCRIPT = textwrap.dedent('''
    import logging, os, subprocess, sys, warnings
    from mhpo_vl.runs import console

    with console.capture(sys.argv[1], verbose=sys.argv[2] == "verbose"):
        console.line("OURS: loading model")
        os.write(1, b"LIB: C-level write to fd 1\\n")
        os.write(2, b"LIB: C-level write to fd 2\\n")
        print("LIB: print to sys.stdout")
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("vllm").info("LIB: an INFO line from a library logger")
        warnings.warn("LIB: a deprecation warning")
        subprocess.run(["echo", "LIB: a child process"], check=True)
        for _ in console.progress(iterable=range(3), desc="OURS-BAR"):
            pass
        console.line("OURS: validation accuracy 0.5")
        if sys.argv[3] == "fail":
            raise ValueError("OURS-ERROR: the reason it failed")
    print("OURS: summary")
''')


def _run_script(tmp_path, mode="quiet", outcome="ok", rank=None):
    script = tmp_path / "s.py"
    script.write_text(_SCRIPT)
    env = {**RUN_ENV}
    env.pop("RANK", None)
    if rank is not None:
        env["RANK"] = str(rank)
    log = tmp_path / "run" / "logs" / "train.log"
    done = subprocess.run([sys.executable, str(script), str(log), mode, outcome], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return done, log


def test_library_output_goes_to_the_log_and_our_lines_to_the_terminal(tmp_path):
    done, log = _run_script(tmp_path)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "LIB" not in terminal, terminal
    for ours in ("OURS: loading model", "OURS-BAR", "OURS: validation accuracy 0.5", "OURS: summary"):
        assert ours in terminal
    assert done.stdout == "OURS: summary\n"  # after the block, stdout is the terminal again
    text = log.read_text()
    for lib in ("C-level write to fd 1", "C-level write to fd 2", "print to sys.stdout",
                "an INFO line from a library logger", "a deprecation warning", "a child process"):
        assert f"LIB: {lib}" in text, lib
    assert "OURS" not in text


def test_an_exception_shows_the_log_tail_the_traceback_and_the_log_path(tmp_path):
    done, log = _run_script(tmp_path, outcome="fail")
    assert done.returncode == 1
    err = done.stderr
    assert "Traceback (most recent call last)" in err and "ValueError: OURS-ERROR: the reason it failed" in err
    assert f"full log: {log}" in err
    assert "  | LIB: C-level write to fd 2" in err  # the libraries' last words come first, marked as the log's
    assert err.index("full log") < err.index("Traceback")
    assert "OURS: summary" not in done.stdout
    assert "ValueError: OURS-ERROR" in log.read_text()  # the log alone tells the whole story


def test_verbose_prints_library_output_live_and_writes_no_log(tmp_path):
    done, log = _run_script(tmp_path, mode="verbose")
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "LIB: C-level write to fd 1" in terminal and "LIB: a child process" in terminal
    assert "OURS: validation accuracy 0.5" in terminal
    assert not log.exists()


def test_other_ranks_print_no_progress_and_log_to_their_own_file(tmp_path):
    done, log = _run_script(tmp_path, rank=1, outcome="fail")
    assert "OURS: loading model" not in done.stderr and "OURS-BAR" not in done.stderr
    assert "ValueError: OURS-ERROR" in done.stderr  # errors come from every rank
    from mhpo_vl.runs.console import log_path

    os.environ.pop("RANK", None)
    assert log_path("runs/x", "train") == Path("runs/x/logs/train.log")
    os.environ["RANK"] = "3"
    try:
        assert log_path("runs/x", "train") == Path("runs/x/logs/train.rank3.log")
    finally:
        del os.environ["RANK"]


def test_an_error_inside_mhpo_vl_train_surfaces_with_its_traceback(tmp_path):
    """The failure happens after the capture began (the model folder does not exist): the terminal still shows
    the exception, its traceback and where the log is."""
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    missing = tmp_path / "no_such_model"
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mhpo_vl.cli", "train", "--config", str(config),
                           f"model.name_or_path={missing}", f"trainer.output_dir={out}", "trainer.device=cpu",
                           "rollout.backend=hf"], cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert str(missing) in done.stderr.split("Traceback (most recent call last)")[1]  # the exception's own message
    assert f"full log: {out / 'logs' / 'train.log'}" in done.stderr
    assert "Traceback" in (out / "logs" / "train.log").read_text()


@pytest.mark.slow
def test_a_short_train_run_prints_a_few_lines_and_logs_the_rest(tmp_path, tiny_vl_model_dir):
    """4 RL steps with vLLM rollouts, a warm-start, 3 validations and 2 checkpoints: the terminal shows set-up
    lines, two progress bars, the validations and the summary; vLLM's and the libraries' lines are in the log."""
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mhpo_vl.cli", "train", "--config", str(config),
               *small_overrides(tiny_vl_model_dir, out, **{"warmstart.steps": "5", "warmstart.batch_size": "4"})]
    done = subprocess.run(command, cwd=REPO, env=RUN_ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-5000:]
    terminal = done.stdout + done.stderr
    lines = terminal.splitlines()
    assert len(lines) < 60, terminal
    assert "WARNING" not in terminal and "INFO" not in terminal, terminal
    assert sum("validation" in line for line in lines) == 4  # before the warm-start, at steps 0, 2, 4
    assert "warm-start" in terminal and "RL" in terminal and f"{out / 'logs' / 'train.log'}" in terminal
    log = (out / "logs" / "train.log").read_text()
    assert log.count("\n") > 100 and "vllm" in log.lower()
