"""`mhpo-vl score` end to end on real benchmark rows, MathVerse's rules, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhpo_vl.cli import main
from mhpo_vl.scoring import mathverse


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def vision_rows(fixtures_dir):
    lines = (fixtures_dir / "mathvision" / "testmini.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_score_mathvision_rows(tmp_path, vision_rows, capsys):
    rows = [
        dict(vision_rows["6"], response="Looking at the ears, the answer is D."),  # gold D
        dict(vision_rows["6"], response="\\boxed{C}"),
        dict(vision_rows["250"], response="So the area is \\boxed{\\frac{24}{5}}."),  # gold 4.8
        dict(vision_rows["2955"], response="The point is \\boxed{(3, -4)}"),  # gold (3,-4)
    ]
    out = tmp_path / "out.jsonl"
    rc = main(["score", "--benchmark", "mathvision", "--predictions", str(_write_jsonl(tmp_path / "in.jsonl", rows)),
               "--out", str(out)])
    assert rc == 0
    scored = _read_jsonl(out)
    assert [r["correct"] for r in scored] == [True, False, True, True]
    assert [r["prediction"] for r in scored] == ["d", "c", "\\frac{24}{5}", "(3,-4)"]
    for original, line in zip(rows, scored):  # the input row comes back whole, plus the two fields
        assert {k: v for k, v in line.items() if k not in ("prediction", "correct")} == original
    summary = json.loads(capsys.readouterr().err.splitlines()[0])
    assert (summary["scored"], summary["correct"], summary["accuracy"]) == (4, 3, 0.75)


def test_score_mathvista_official_and_strict(tmp_path, fixtures_dir):
    testmini = json.loads((fixtures_dir / "mathvista" / "testmini.json").read_text())
    rows = [
        dict(testmini["5"], response="I am not sure."),  # choices 97/102/107/122, gold 97
        dict(testmini["5"], response="irrelevant", extraction="(A)"),
        dict(testmini["1"], response="d = \\boxed{1.24} m"),  # float, precision 1, gold 1.2
    ]
    path = _write_jsonl(tmp_path / "in.jsonl", rows)
    verdicts = {}
    for mode in ("official", "strict"):
        out = tmp_path / f"{mode}.jsonl"
        assert main(["score", "--benchmark", "mathvista", "--predictions", str(path), "--out", str(out), "--mode", mode]) == 0
        verdicts[mode] = [(r["prediction"], r["correct"]) for r in _read_jsonl(out)]
    # Nothing to extract from "I am not sure.": extraction "". Officially the nearest choice to "" is the shortest,
    # "97" (2 edits), which is right: scored. Strict: no choice named, wrong.
    assert verdicts["official"] == [("97", True), ("97", True), ("1.2", True)]
    assert verdicts["strict"] == [(None, False), ("97", True), ("1.2", True)]
    assert _read_jsonl(tmp_path / "strict.jsonl")[0]["extraction"] == ""
    assert "extraction" in _read_jsonl(tmp_path / "strict.jsonl")[2]  # extracted here: reported
    assert _read_jsonl(tmp_path / "strict.jsonl")[1]["extraction"] == "(A)"  # given: kept as it was


def test_score_mathverse_with_its_own_response_field(tmp_path, fixtures_dir):
    template = json.loads((fixtures_dir / "mathverse" / "output_testmini_template.json").read_text())
    out = tmp_path / "out.jsonl"
    rc = main(["score", "--benchmark", "mathverse", "--predictions", str(_write_jsonl(tmp_path / "in.jsonl", template)),
               "--out", str(out), "--response-field", "model_answer"])
    assert rc == 0
    # Gold 14 for all five versions; the Vision Only answer ends "... is 13 cm." (read by hand).
    assert [r["correct"] for r in _read_jsonl(out)] == [True, True, True, True, False]


def test_mathverse_multiple_choice_letters_and_choice_text(fixtures_dir):
    row = json.loads((fixtures_dir / "mathverse" / "testmini_text_only.json").read_text())[0]
    assert row["answer"] == "D" and mathverse.choices_from_question(row["question"]) == ["40°", "60°", "120°", "140°"]
    assert mathverse.score(row, "Therefore, the answer is D.") == ("D", True)
    assert mathverse.score(row, "...\nD:140°") == ("D", True)
    assert mathverse.score(row, "The angle is \\boxed{140^\\circ}") == ("D", True)  # the text of choice D
    assert mathverse.score(row, "\\boxed{C}") == ("C", False)
    assert mathverse.score(row, "no idea") == (None, False)


def test_missing_field_names_line_and_field(tmp_path, vision_rows, capsys):
    rows = [dict(vision_rows["6"], response="\\boxed{D}"), {k: v for k, v in vision_rows["4"].items() if k != "answer"}]
    rows[1]["response"] = "\\boxed{6}"
    path = _write_jsonl(tmp_path / "in.jsonl", rows)
    with open(path, "a") as f:
        f.write("{not json\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", "--benchmark", "mathvision", "--predictions", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path} line 2: missing field 'answer' (1 more bad lines" in err
    assert not out.exists()  # checked before anything is scored
    assert main(["score", "--benchmark", "mathvision", "--predictions", str(path), "--out", str(out), "--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert [r["correct"] for r in _read_jsonl(out)] == [True]
    assert json.loads(err.splitlines()[0])["bad_rows_skipped"] == 2
    assert f"skipped {path} line 2: missing field 'answer'" in err
    assert f"skipped {path} line 3: invalid JSON" in err


def test_huge_and_hanging_responses(tmp_path, vision_rows, capsys):
    rows = [
        dict(vision_rows["4"], response="\\boxed{9} " + "x" * 3_000_000 + " the answer is \\boxed{6}"),  # gold 6
        dict(vision_rows["4"], response="\\boxed{10^{10^{10^{10}}}}"),  # 10^(10^10): the old eval would never end
        dict(vision_rows["5"], response="\\boxed{61}"),  # gold 61
    ]
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    rc = main(["score", "--benchmark", "mathvision", "--predictions", str(_write_jsonl(tmp_path / "in.jsonl", rows)),
               "--out", str(out), "--timeout-s", "3"])
    assert rc == 0 and time.monotonic() - started < 20
    scored = _read_jsonl(out)
    assert [r["correct"] for r in scored] == [True, False, True]
    assert scored[0]["prediction"] == "6"
    summary = json.loads(capsys.readouterr().err.splitlines()[0])
    assert summary["timeouts"] + summary["errors"] == 0  # the tower is refused by the safe evaluator, not timed out


def test_a_killed_run_leaves_the_previous_output_and_its_lines_in_the_temporary_file(tmp_path):
    # Three quick rows, then one whose sympy work never ends (the 120 s limit is far away), then one more.
    rows = [{"answer": "5", "response": "\\boxed{5}"}] * 3 + [{"answer": "5", "response": "\\boxed{9^{9^{9^{9}}}}"},
                                                             {"answer": "5", "response": "\\boxed{5}"}]
    path, out = _write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    out.write_text("the previous output\n")

    def partial() -> Path | None:
        found = list(tmp_path.glob(".out.jsonl.*.tmp"))
        return found[0] if found else None
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mhpo_vl.cli", "score", "--benchmark", "math500", "--predictions", str(path),
         "--out", str(out), "--timeout-s", "120", "--num-workers", "1"],
        stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 180  # the scoring pool imports sympy/math-verify first: slow on a busy CPU
        while time.monotonic() < deadline and not (partial() and partial().read_text().count("\n") >= 3):
            time.sleep(0.2)
        still_running = proc.poll() is None
        proc.kill()  # a crash in the middle of the run
    finally:
        proc.wait()
    assert still_running, "the run ended by itself: the killed-run case was not exercised"
    assert out.read_text() == "the previous output\n"  # OUT.jsonl is replaced only by a complete output
    assert partial() is not None, "no temporary output file appeared within 180 s"
    lines = partial().read_text().splitlines()  # a kill -9 cannot clean up; the lines scored so far are there
    assert len(lines) == 3 and all(json.loads(line)["correct"] is True for line in lines)


def test_reference_fills_gold_fields_and_rejects_unknown_ids(tmp_path, fixtures_dir, capsys):
    reference = fixtures_dir / "mathvision" / "testmini.jsonl"
    rows = [{"id": "6", "response": "\\boxed{D}"}, {"id": "250", "response": ""},  # an empty response is just wrong
            {"id": "999999", "response": "\\boxed{1}"}, {"id": "4", "answer": "7", "response": "\\boxed{7}"}]
    path, out = _write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    args = ["score", "--benchmark", "mathvision", "--predictions", str(path), "--out", str(out), "--reference", str(reference)]
    assert main(args) == 2
    assert f"{path} line 3: id '999999' is not in the benchmark (--reference)" in capsys.readouterr().err
    assert main(args + ["--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert "line 4: field 'answer' is '7' but the benchmark has '6'" in err
    scored = _read_jsonl(out)
    assert [(r["id"], r["answer"], r["correct"]) for r in scored] == [("6", "D", True), ("250", "4.8", False)]
    assert scored[0]["options"] == ["A", "B", "C", "D", "E"]  # filled from the benchmark's row
