"""benchmarks/peer_trl.py: the pure parts (medians, rows, ratios, failure rows) by hand, and one tiny end-to-end
run of ours-hf and trl-hf (slow; skipped when TRL cannot be imported: MHPO_VL_TRL_PATH names a
`pip install --no-deps --target DIR trl==1.16.0` folder)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "peer_trl.py"


def _load():
    spec = importlib.util.spec_from_file_location("peer_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer = _load()


def _run(seconds, tokens, rss=1.0, setup=5.0, prompt_tokens=920, rows=10):
    return {"steps": [{"seconds": s, "cpu_seconds": 2 * s, "completion_tokens": t, "prompt_tokens": prompt_tokens, "rows": rows,
                       "reward_mean": 0.5, "torch_threads": 2} for s, t in zip(seconds, tokens)],
            "peak_rss_gb": rss, "setup_s": setup, "log": "/logs/x.log"}


def test_median_of_steps_2_to_n_over_repeats():
    # repeat 1: steps 2..4 = 2, 4, 6; repeat 2: steps 2..4 = 3, 5, 100 -> sorted 2 3 4 5 6 100 -> (4 + 5) / 2
    assert peer.median_step_seconds([[50.0, 2.0, 4.0, 6.0], [60.0, 3.0, 5.0, 100.0]]) == 4.5
    assert peer.median_step_seconds([[9.0, 1.0, 3.0]]) == 2.0  # step 1 (9 s) never counts
    assert peer.median_step_seconds([[7.0]]) == 7.0  # a 1-step run keeps its only step
    with pytest.raises(ValueError):
        peer.median_step_seconds([])


def test_tokens_per_second_is_the_median_of_per_step_rates():
    # steps 2..3: 100 tokens / 2 s = 50, 300 / 2 = 150; other repeat: 40 / 1 = 40 -> median of 40, 50, 150 = 50
    runs = [[(10.0, 999.0), (2.0, 100.0), (2.0, 300.0)], [(10.0, 999.0), (1.0, 40.0)]]
    assert peer.median_tokens_per_s(runs) == 50.0


def test_summarize_and_ratio_rows():
    ours = peer.summarize("ours-hf", [_run([9, 2, 4], [0, 64, 64], rss=1.0, setup=4.0),
                                       _run([9, 3, 5], [0, 96, 96], rss=1.5, setup=6.0)])
    assert ours["ran"] and ours["s_per_step"] == 3.5  # median of 2, 3, 4, 5
    # rates: 64/2 = 32, 64/4 = 16, 96/3 = 32, 96/5 = 19.2 -> sorted 16, 19.2, 32, 32 -> (19.2 + 32) / 2 = 25.6
    assert ours["gen_tokens_per_s"] == pytest.approx(25.6)
    assert ours["peak_rss_gb"] == 1.5 and ours["setup_s"] == 5.0
    assert ours["prompt_tokens_per_row"] == 92.0
    trl = peer.summarize("trl-hf", [_run([9, 7, 7], [0, 64, 64], rss=3.0)])
    slower = peer.summarize("trl-vllm", [_run([9, 10, 10], [0, 64, 64], rss=0.5)])
    ratio = peer.ratios([ours, trl, slower])
    assert ratio["ours_fastest"] == "ours-hf" and ratio["trl_fastest"] == "trl-hf"
    assert ratio["step_time_ratio_trl_over_ours"] == 2.0  # 7 / 3.5
    assert ratio["peak_rss_ratio_trl_over_ours"] == 2.0  # 3.0 / 1.5, the two fastest configs' peaks
    assert ours["cpu_s_per_step"] == 7.0 and ratio["cpu_time_ratio_trl_over_ours"] == 2.0  # 14 / 7
    row = peer.format_row(trl)
    assert row.startswith("| trl-hf | 7.00 | 14.00 | 9 | 3.00 | 5.0 | ")  # 64 / 7 = 9.1 tokens/s
    table = peer.format_table([ours, trl, slower], ratio)
    assert "s/step / ours fastest (ours-hf) s/step = 2.00x" in table
    assert "peak RSS trl-hf / ours-hf = 2.00x; CPU s/step 2.00x" in table


def test_failure_row_names_the_first_line_and_the_log():
    failed = {"steps": [], "error": "AttributeError: 'Parameter' object has no attribute 'weight_loader'\nmore",
              "log": "/logs/trl-vllm.r1.log", "failed_at_step": 2}
    row = peer.summarize("trl-vllm", [failed, dict(failed, log="/logs/trl-vllm.r2.log")])
    assert row["ran"] is False and row["failed_runs"] == 2
    text = peer.format_row(row)
    assert text.startswith("| trl-vllm | did not run: AttributeError: 'Parameter' object has no attribute "
                           "'weight_loader' | | | | | failed at step 2; ")
    assert "more" not in text and "/logs/trl-vllm.r1.log" in text and "failed at step 2" in text
    ratio = peer.ratios([row])
    assert ratio["step_time_ratio_trl_over_ours"] is None
    assert "ratio: not available" in peer.format_table([row], ratio)


def test_a_partly_failed_config_keeps_its_finished_runs():
    ok = _run([9, 2, 2], [0, 10, 10])
    bad = {"steps": [], "error": "RuntimeError: boom", "log": "/logs/b.log"}
    row = peer.summarize("ours-vllm", [ok, bad])
    assert row["ran"] and row["s_per_step"] == 2.0 and row["failed_runs"] == 1
    assert "1 of 2 runs failed: RuntimeError: boom" in peer.format_row(row)


def test_first_line_skips_blank_lines():
    assert peer.first_line("\n\n  Encoder cache miss for x \n trace") == "Encoder cache miss for x"
    assert peer.first_line("") == "unknown error"


@pytest.mark.slow
def test_ours_hf_and_trl_hf_run_end_to_end(tmp_path):
    trl_path = os.environ.get("MHPO_VL_TRL_PATH")
    if trl_path:
        sys.path.insert(0, trl_path)
    try:
        pytest.importorskip("trl", reason="TRL is not importable (pip install --no-deps trl==1.16.0, or set "
                                          "MHPO_VL_TRL_PATH to a --target folder holding it)")
    finally:
        if trl_path:
            sys.path.remove(trl_path)
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(SCRIPT), "--configs", "ours-hf,trl-hf", "--prompts", "4", "--k", "2",
           "--max-new-tokens", "4", "--steps", "2", "--repeats", "1", "--threads", "2",
           "--log-dir", str(tmp_path / "logs"), "--json", str(out)]
    if trl_path:
        cmd += ["--trl-path", trl_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == summary
    rows = {r["config"]: r for r in summary["rows"]}
    for name in ("ours-hf", "trl-hf"):
        row = rows[name]
        assert row["ran"], f"{name}: {row.get('error')} (log {row.get('error_log')})"
        assert row["s_per_step"] > 0 and row["gen_tokens_per_s"] > 0 and row["peak_rss_gb"] > 0
    # the same prompts: the same prompt tokens per row in both trainers
    assert rows["ours-hf"]["prompt_tokens_per_row"] == rows["trl-hf"]["prompt_tokens_per_row"]
    assert summary["step_time_ratio_trl_over_ours"] > 0
    assert "| ours-hf | " in proc.stdout and "| trl-hf | " in proc.stdout
