"""`mhpo-vl eval`, `eval-run` and `report` end to end on the real benchmark fixtures.

Fast tests exercise everything that happens before or without sampling (argument checks, bad input, resuming from a
finished responses file, the tables). The slow ones start a real vLLM engine (one for all nine benchmarks) or the HF
sampler on the tiny random models; accuracy there is meaningless, the pipeline is what is checked.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mhpo_vl.cli import main
from mhpo_vl.evaluation.results import ProblemResult, ResponsesFile

ALL_SUITES = "mathvista,mathvision,mathverse,geometry3k,math500,aime24,aime25,amc23,hmmt25"
MATHVISTA_WITH_IMAGES = "106,225,540,824,852"  # the 5 testmini images in the fixtures (PROVENANCE.md)


def fixture_sources(fx: Path) -> list[str]:
    """Every benchmark pointed at its fixture: MathVista keeps only the rows whose image is on disk, MathVerse is the
    text-only file, Geometry3K's fixture problems are train ids (11-20)."""
    text = fx / "text_math"
    return [
        "--source", f"mathvista={fx / 'mathvista'}", "--option", "mathvista.require_images=false",
        "--ids", f"mathvista={MATHVISTA_WITH_IMAGES}",
        "--source", f"mathvision={fx / 'mathvision'}",
        "--source", f"mathverse={fx / 'mathverse' / 'testmini_text_only.json'}",
        "--source", f"geometry3k={fx / 'geometry3k' / 'hf_format.jsonl'}", "--split", "geometry3k=train",
        "--source", f"math500={text}", "--source", f"aime24={text}", "--source", f"aime25={text}",
        "--source", f"amc23={text}", "--source", f"hmmt25={text}",
    ]


def problem(pid: str, correct: list[bool], predictions: list[str | None]) -> ProblemResult:
    n = len(correct)
    return ProblemResult(
        id=pid, question="q", answer="1", answer_type="integer", choices=None, prompt="q",
        responses=[f"\\boxed{{{p}}}" if p else "" for p in predictions], finish_reasons=["stop"] * n,
        num_tokens=[4] * n, predictions=predictions, correct=correct, format_ok=[False] * n, timed_out=[False] * n,
        errors=[None] * n, metadata={"level": 1},
    )


def math500_ids(fx: Path, count: int) -> list[str]:
    from mhpo_vl.datasets import load_dataset

    return [s.id for s in load_dataset("math500", str(fx / "text_math"))[:count]]


# ----------------------------------------------------------------------------------------- bad input --

def test_unknown_benchmark_lists_the_valid_ones(capsys, tmp_path):
    code = main(["eval", "--model", str(tmp_path), "--suites", "mathvista,mathvista2", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown evaluation suite 'mathvista2'" in err and "valid: mathvista, mathvision, mathverse, geometry3k" in err


def test_missing_source_path_is_named(capsys, tmp_path):
    code = main(["eval", "--model", str(tmp_path), "--benchmarks", "math500", "--source",
                 f"math500={tmp_path / 'nope'}", "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert f"--source math500={tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err


def test_flag_for_a_benchmark_not_chosen_is_an_error(capsys, tmp_path, fixtures_dir):
    code = main(["eval", "--model", str(tmp_path), "--benchmarks", "math500", "--source",
                 f"aime24={fixtures_dir / 'text_math'}", "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "'aime24' is not among --suites (math500)" in capsys.readouterr().err


def test_ids_not_in_the_benchmark_are_named(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    code = main(["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "mathvista", *_only(fixtures_dir, "mathvista"),
                 "--ids", "mathvista=106,99999", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--ids mathvista: 1 id(s) not in the suite" in err and err.rstrip().endswith("99999")


def _only(fx: Path, name: str) -> list[str]:
    """The fixture flags of one benchmark (minus --ids, which the tests choose)."""
    args = fixture_sources(fx)
    out = []
    for flag, value in zip(args[::2], args[1::2]):
        if value.startswith(name + "=") or value.startswith(name + "."):
            if flag != "--ids":
                out += [flag, value]
    return out


def test_text_only_model_needs_no_images_for_an_image_benchmark(capsys, tmp_path, fixtures_dir, tiny_text_model_dir):
    code = main(["eval", "--model", str(tiny_text_model_dir), "--benchmarks", "math500,mathvision",
                 *_only(fixtures_dir, "math500"), *_only(fixtures_dir, "mathvision"), "--limit", "2",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "suite mathvision: 2 problem(s) have images but" in err and "text-only model; pass --no-images" in err


def test_mathvista_rows_without_their_image_are_refused(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    # 106 has its image in the fixtures, 1 does not
    code = main(["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "mathvista", *_only(fixtures_dir, "mathvista"),
                 "--ids", "mathvista=1,106", "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "mathvista: 1 selected problem(s) have no image on disk (e.g. 1)" in capsys.readouterr().err


def test_corrupt_responses_line_is_named_before_sampling(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    out = tmp_path / "out"
    ids = math500_ids(fixtures_dir, 3)
    path = out / "math500" / "responses.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(problem(ids[0], [True], ["1"]).to_json() + "\n" + '{"id": "truncated\n')
    path.write_text(path.read_text() + problem(ids[1], [True], ["1"]).to_json() + "\n")
    code = main(["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "math500", *_only(fixtures_dir, "math500"),
                 "--n", "1", "--limit", "3", "--output-dir", str(out)])
    assert code == 2 and f"{path}: line 2: corrupt JSON" in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    out = tmp_path / "out"
    ids = math500_ids(fixtures_dir, 1)
    ResponsesFile(out / "math500" / "responses.jsonl").append([problem(ids[0], [True, False], ["1", "2"])])
    base = ["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "math500", *_only(fixtures_dir, "math500"),
            "--n", "2", "--limit", "1", "--output-dir", str(out)]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--temperature", "0.6"]) == 2
    assert "temperature: file has 1.0, now 0.6" in capsys.readouterr().err


# ------------------------------------------------------------------------ resuming a finished benchmark --

def test_finished_responses_are_summarised_without_sampling(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    """A rerun over a complete responses file starts no engine and gives the hand-computed metrics."""
    out = tmp_path / "out"
    a, b = math500_ids(fixtures_dir, 2)
    ResponsesFile(out / "math500" / "responses.jsonl").append([
        problem(a, [True, False], ["1", "2"]),   # c=1 of 2; vote tie -> "1" (first) -> correct
        problem(b, [False, False], [None, "7"]),  # c=0; vote "7" -> wrong
    ])
    code = main(["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", "math500", *_only(fixtures_dir, "math500"),
                 "--n", "2", "--limit", "2", "--output-dir", str(out), "--label", "tiny"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    m = summary["benchmarks"]["math500"]["metrics"]
    assert summary["timing_seconds"] == {}  # nothing sampled, no engine
    assert m["avg"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert m["pass_at_k"] == {"1": pytest.approx(0.25), "2": pytest.approx(0.5)}  # pass@2: (1 + 0) / 2
    assert m["majority"] == pytest.approx(0.5)
    assert m["no_answer_rate"] == pytest.approx(0.25)
    assert summary["average"] == pytest.approx(0.25)
    # both problems are level "1" in this hand-made file
    assert summary["benchmarks"]["math500"]["breakdowns"]["level"] == {"1": {"problems": 2, "avg": 0.25, "majority": 0.5}}
    assert "| tiny | 25.0 | 25.0 |" in (out / "summary.md").read_text() and "| tiny | 25.0 | 25.0 |" in printed


# ---------------------------------------------------------------------------------------------- report --

def _eval_dir(root: Path, label: str, avgs: dict[str, float]) -> Path:
    d = root / label
    d.mkdir(parents=True)
    benches = {b: {"metrics": {"avg": a, "majority": a, "pass_at_k": {"1": a}, "n": 4}} for b, a in avgs.items()}
    (d / "summary.json").write_text(json.dumps({
        "model": label, "model_label": label, "benchmarks": benches, "average": sum(avgs.values()) / len(avgs),
        "sampling": {"n": 4, "temperature": 1.0, "top_p": 0.7, "max_tokens": 2048, "seed": 0}}))
    return d


def test_report_compares_runs_with_deltas(capsys, tmp_path):
    grpo = _eval_dir(tmp_path, "grpo", {"mathvista": 0.686, "mathvision": 0.273, "mathverse": 0.527})
    mhpo = _eval_dir(tmp_path, "mhpo", {"mathvista": 0.718, "mathvision": 0.305, "mathverse": 0.567})
    out_file = tmp_path / "report.md"
    assert main(["report", str(grpo), str(mhpo / "summary.json"), "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert text == out_file.read_text()
    assert "| Run | mathvista | mathvision | mathverse | Avg. |" in text
    # GRPO avg (68.6+27.3+52.7)/3 = 49.53; MHPO (71.8+30.5+56.7)/3 = 53.0; delta +3.47
    assert "| grpo | 68.6 (+0.0) | 27.3 (+0.0) | 52.7 (+0.0) | 49.5 (+0.0) |" in text
    assert "| mhpo | 71.8 (+3.2) | 30.5 (+3.2) | 56.7 (+4.0) | 53.0 (+3.5) |" in text
    assert main(["report", str(grpo), str(mhpo), "--labels", "A"]) == 2
    assert "--labels has 1 name(s) for 2 run(s)" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no evaluation summary at" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- eval-run --

def test_eval_run_best_vs_latest_from_finished_checkpoints(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    """Two checkpoints whose responses are already on disk: the Table 4 numbers are hand-computed."""
    run_dir = tmp_path / "run"
    for step in ("step_000005", "step_000010"):
        (run_dir / "checkpoints" / step).mkdir(parents=True)
        shutil.copy(tiny_vl_model_dir / "config.json", run_dir / "checkpoints" / step / "config.json")
    (run_dir / "checkpoints" / "index.json").write_text(json.dumps({
        "latest": "step_000010", "best": "step_000005", "best_val_accuracy": 0.5,
        "history": [{"name": "step_000005", "step": 5, "val_accuracy": 0.5},
                    {"name": "step_000010", "step": 10, "val_accuracy": 0.25}]}))
    out = tmp_path / "evals"
    a, b = math500_ids(fixtures_dir, 2)
    # step 5: (2/2 + 1/2) / 2 = 0.75; step 10: (1/2 + 0/2) / 2 = 0.25; drop = 0.25 - 0.75 = -0.5
    ResponsesFile(out / "step_000005" / "math500" / "responses.jsonl").append(
        [problem(a, [True, True], ["1", "1"]), problem(b, [True, False], ["1", "2"])])
    ResponsesFile(out / "step_000010" / "math500" / "responses.jsonl").append(
        [problem(a, [True, False], ["1", "2"]), problem(b, [False, False], ["2", "2"])])
    code = main(["eval-run", str(run_dir), "--benchmarks", "math500", *_only(fixtures_dir, "math500"), "--n", "2",
                 "--limit", "2", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    table = json.loads((out / "best_vs_latest.json").read_text())
    row = table["benchmarks"]["math500"]
    assert row["best"] == pytest.approx(0.75) and row["latest"] == pytest.approx(0.25)
    assert row["drop"] == pytest.approx(-0.5) and row["best_checkpoint"] == "step_000005"
    md = (out / "best_vs_latest.md").read_text()
    assert "| run | 75.0 | 25.0 | 75.0 | 25.0 | -50.0 |" in md
    assert "| step_000005 (best) | 50.0 | 75.0 | 75.0 |" in (out / "checkpoints.md").read_text()
    # the oracle choice per benchmark gives the same best here; asking for a checkpoint that is not there fails
    assert main(["eval-run", str(run_dir), "--benchmarks", "math500", *_only(fixtures_dir, "math500"), "--n", "2",
                 "--limit", "2", "--output-dir", str(out), "--checkpoints", "step_000007"]) == 2
    assert "checkpoint folder(s) not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- --config file --

PROTOCOLS = Path(__file__).resolve().parents[1] / "eval"


def _resolved_config(argv: list[str]):
    """The EvalConfig `mhpo-vl eval ARGV` would run, without running it."""
    from mhpo_vl.cli import build_parser
    from mhpo_vl.commands.eval import eval_config, resolve_options

    args = resolve_options(build_parser(argv).parse_args(argv))
    return eval_config(args, args.model, args.output_dir)


def test_config_file_sits_between_defaults_and_typed_flags(tmp_path):
    config = tmp_path / "protocol.yaml"
    config.write_text("suites: [math500, aime24, mathverse]\nn: 4\ntemperature: 0.6\ntop-p: 0.95\n"
                      "max-tokens: 99\nno-images: true\nsource: {math500: /a, aime24: /b}\n"
                      "option: {mathverse: {problem_version: Vision Only}}\nids: {math500: [3, 5]}\n")
    cfg = _resolved_config(["eval", "--config", str(config), "--model", "m", "--output-dir", "o",
                            "--temperature", "1.0", "--source", "aime24=/c", "--suites", "math500,aime24"])
    assert (cfg.n, cfg.top_p, cfg.max_tokens, cfg.use_images) == (4, 0.95, 99, False)  # from the file
    assert cfg.temperature == 1.0  # typed, though equal to the built-in default: beats the file's 0.6
    assert cfg.seed == 0 and cfg.batch_size == 64  # in neither: the built-in defaults
    assert cfg.suites == "math500,aime24"
    assert cfg.sources == {"math500": "/a", "aime24": "/c"}  # merged per suite, the typed one wins
    assert cfg.options == {} and cfg.ids == {"math500": ["3", "5"]}  # mathverse's option: a suite not chosen
    # Without the file, the same untyped options are the built-in defaults.
    plain = _resolved_config(["eval", "--model", "m", "--output-dir", "o", "--suites", "math500"])
    assert (plain.n, plain.temperature, plain.top_p, plain.max_tokens, plain.use_images) == (32, 1.0, 0.7, 2048, True)


def test_paper_protocol_files_hold_the_paper_values():
    from mhpo_vl.commands.eval import read_config_file

    vl = read_config_file(PROTOCOLS / "paper_vl.yaml")
    assert vl["suites"] == "mathvista,mathvision,mathverse"
    assert (vl["n"], vl["temperature"], vl["top_p"], vl["max_tokens"]) == (32, 1.0, 0.7, 2048)
    assert (vl["min_pixels"], vl["max_pixels"]) == (262144, 4194304)
    text = read_config_file(PROTOCOLS / "paper_text.yaml")
    assert text["suites"] == "math500,hmmt25,amc23,aime25,aime24" and (text["n"], text["max_tokens"]) == (32, 2048)


@pytest.mark.parametrize("line, message", [
    ("top_p: 0.9", "unknown key 'top_p' (did you mean 'top-p'?"),
    ("benchmark: math500", "unknown key 'benchmark'; valid keys: model, label, output-dir, suites, n,"),
    ("n: many", "n: invalid int value: 'many'"),
    ("source: /data/math500", "source: expected a mapping of suite names"),
], ids=["underscore", "unknown", "bad-int", "not-a-mapping"])
def test_bad_config_file_is_one_line_naming_the_key(capsys, tmp_path, line, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"suites: math500\n{line}\n")
    code = main(["eval", "--config", str(config), "--model", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"mhpo-vl eval: error: {config}: {message}")


def test_config_file_values_reach_the_summary(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    """End to end through `mhpo-vl eval` on finished responses (no sampling): the file's settings are the run's,
    a typed --n beats the file's."""
    out = tmp_path / "out"
    a, b = math500_ids(fixtures_dir, 2)
    ResponsesFile(out / "math500" / "responses.jsonl").append(
        [problem(a, [True, False], ["1", "2"]), problem(b, [False, False], [None, "7"])])
    config = tmp_path / "protocol.yaml"
    config.write_text(f"suites: math500\nsource: {{math500: {fixtures_dir / 'text_math'}}}\nn: 32\n"
                      "temperature: 0.6\ntop-p: 0.95\nmax-tokens: 99\nseed: 7\nlimit: 2\n")
    code = main(["eval", "--config", str(config), "--model", str(tiny_vl_model_dir), "--n", "2",
                 "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary["sampling"][k] for k in ("n", "temperature", "top_p", "max_tokens", "seed")} == {
        "n": 2, "temperature": 0.6, "top_p": 0.95, "max_tokens": 99, "seed": 7}
    assert summary["benchmarks"]["math500"]["metrics"]["problems"] == 2


# ------------------------------------------------------------------------------- slow: real sampling --

@pytest.mark.slow
def test_eval_every_suite_with_vllm_and_resume(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    """One vLLM engine for all nine benchmarks (n=2, 3 problems each); then a rerun that has nothing to do, and one
    that redoes a deleted problem and draws exactly what the first run drew (seeds follow the dataset position)."""
    import time

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_vl_model_dir), "--benchmarks", ALL_SUITES, *fixture_sources(fixtures_dir),
            "--n", "2", "--max-tokens", "12", "--limit", "3", "--dtype", "float32", "--min-pixels", "3136",
            "--max-pixels", "12544", "--max-prompt-length", "1024", "--label", "tiny-vl", "--output-dir", str(out),
            "--no-progress"]
    started = time.perf_counter()
    assert main(argv) == 0, capsys.readouterr().err
    first_wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    names = ALL_SUITES.split(",")
    assert list(summary["benchmarks"]) == names and summary["sampling"]["use_images"] is True
    for name in names:
        lines = (out / name / "responses.jsonl").read_text().splitlines()
        assert len(lines) == 3, name
        for line in lines:
            row = json.loads(line)
            assert len(row["responses"]) == len(row["predictions"]) == len(row["correct"]) == 2
            assert all(f in ("stop", "length") for f in row["finish_reasons"])
            assert all(1 <= t <= 12 for t in row["num_tokens"])
        m = summary["benchmarks"][name]["metrics"]
        assert m["problems"] == 3 and m["n"] == 2 and set(m["pass_at_k"]) == {"1", "2"}
        assert 0.0 <= m["avg"] <= m["pass_at_k"]["2"] <= 1.0
    assert [json.loads(x)["id"] for x in (out / "mathvista" / "responses.jsonl").read_text().splitlines()] == ["106", "225", "540"]
    assert set(summary["benchmarks"]["mathvista"]["breakdowns"]) == {"task", "skills"}
    assert set(summary["benchmarks"]["mathvision"]["breakdowns"]) == {"subject", "level"}
    assert "problem_version" in summary["benchmarks"]["mathverse"]["breakdowns"]
    md = (out / "summary.md").read_text()
    assert "| Model | " + " | ".join(names) + " | Avg. |" in md and "| tiny-vl |" in md
    assert "### mathvista by skills" in md

    # Rerun: every problem is done -> no engine, same summary.
    started = time.perf_counter()
    assert main(argv) == 0
    rerun_wall = time.perf_counter() - started
    again = json.loads((out / "summary.json").read_text())
    assert again["timing_seconds"] == {} and again["benchmarks"] == summary["benchmarks"]

    # Crash simulation: the last problem of two benchmarks is lost -> only those are sampled again, identically.
    kept = {}
    for name in ("math500", "mathvision"):
        path = out / name / "responses.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        kept[name] = json.loads(lines[-1])
        path.write_text("".join(lines[:-1]) + lines[-1][:40])  # an unfinished write
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "line 3 is an unfinished write" in err
    third = json.loads((out / "summary.json").read_text())
    assert set(third["timing_seconds"]) == {"engine_start", "math500", "mathvision"}
    for name in ("math500", "mathvision"):
        redone = json.loads((out / name / "responses.jsonl").read_text().splitlines()[-1])
        assert redone["id"] == kept[name]["id"] and redone["responses"] == kept[name]["responses"]
    assert third["benchmarks"] == summary["benchmarks"]
    print(f"\n[timing] 9 benchmarks x 3 problems x n=2: first run {first_wall:.1f} s "
          f"(engine start {summary['timing_seconds']['engine_start']:.1f} s), rerun {rerun_wall:.2f} s")


@pytest.mark.slow
def test_text_model_on_an_image_benchmark_with_no_images_hf_backend(capsys, tmp_path, fixtures_dir, tiny_text_model_dir):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tiny_text_model_dir), "--benchmarks", "mathvision,aime25",
                 *_only(fixtures_dir, "mathvision"), *_only(fixtures_dir, "aime25"), "--no-images", "--backend", "hf",
                 "--n", "2", "--max-tokens", "8", "--limit", "2", "--dtype", "float32", "--output-dir", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampling"]["use_images"] is False
    assert [json.loads(x)["id"] for x in (out / "mathvision" / "responses.jsonl").read_text().splitlines()] == ["4", "5"]


@pytest.mark.slow
def test_paper_vl_protocol_file_with_vllm(capsys, tmp_path, fixtures_dir, tiny_vl_model_dir):
    """`mhpo-vl eval --config eval/paper_vl.yaml` on the fixtures: the file chooses the suites, splits, temperature
    and top_p; typed flags shrink the rest to what a tiny model on a CPU can take (n, response, image and prompt
    sizes; the file's 2048 response tokens alone take ~4 min here). test_config_file_values_reach_the_summary
    checks the file's values against typed ones without sampling."""
    out = tmp_path / "eval"
    suites = ["mathvista", "mathvision", "mathverse"]
    sources = [arg for name in suites for arg in _only(fixtures_dir, name)]
    argv = ["eval", "--config", str(PROTOCOLS / "paper_vl.yaml"), "--model", str(tiny_vl_model_dir), *sources,
            "--ids", f"mathvista={MATHVISTA_WITH_IMAGES}", "--limit", "2", "--n", "2", "--max-tokens", "16", "--dtype", "float32",
            "--min-pixels", "3136", "--max-pixels", "12544", "--max-prompt-length", "1024",
            "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["benchmarks"]) == suites  # no --suites typed: the file's
    sampling = summary["sampling"]
    assert (sampling["n"], sampling["temperature"], sampling["top_p"], sampling["max_tokens"]) == (2, 1.0, 0.7, 16)
    for name in suites:
        assert summary["benchmarks"][name]["metrics"]["problems"] == 2
        run = json.loads((out / name / "run.json").read_text())
        assert run["split"] == "testmini" and run["pixels"] == [3136, 12544] and run["seed"] == 0
