"""Metrics of mhpo_vl.evaluation.results against hand-computed numbers, and the resumable responses file."""
from __future__ import annotations

import json
import math

import pytest

from mhpo_vl.evaluation.results import (
    ProblemResult,
    ResponsesFile,
    avg_at_n,
    breakdown,
    check_run_settings,
    comparison_table,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
    pass_k_values,
    summarize_problems,
    summary_markdown,
    vote_key,
)


def result(pid: str, correct: list[bool], predictions: list[str | None] | None = None, *, choices=None,
           metadata=None, finish=None) -> ProblemResult:
    n = len(correct)
    return ProblemResult(
        id=pid, question=f"q{pid}", answer="a", answer_type="multiple_choice" if choices else "integer", choices=choices,
        prompt=f"q{pid}", responses=[f"r{i}" for i in range(n)], finish_reasons=finish or ["stop"] * n,
        num_tokens=[10 * (i + 1) for i in range(n)], predictions=predictions or [str(i) for i in range(n)],
        correct=correct, format_ok=[False] * n, timed_out=[False] * n, errors=[None] * n, metadata=metadata or {},
    )


# ------------------------------------------------------------------------------------------- Pass@k --

def test_pass_at_k_hand_computed():
    # n=4, c=2, k=2: 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    # k=1 is c/n: 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # no correct sample -> 0; fewer wrong samples than k -> every k-subset has a correct one -> 1
    assert pass_at_k(4, 0, 3) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0
    # n=32, c=4, k=8: 1 - C(28,8)/C(32,8) = 1 - 3108105/10518300
    assert pass_at_k(32, 4, 8) == pytest.approx(1 - 3108105 / 10518300, rel=1e-12)
    assert math.comb(28, 8) == 3108105 and math.comb(32, 8) == 10518300


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_avg_and_mean_pass_at_k():
    correct = [[True, False, False, False], [True, True, False, False]]
    # (1/4 + 2/4) / 2 = 0.375
    assert avg_at_n(correct) == pytest.approx(0.375)
    # Pass@1 == Avg@n
    assert mean_pass_at_k(correct, 1) == pytest.approx(0.375)
    # Pass@2: problem 1: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; problem 2: 1 - 1/6; mean = (0.5 + 5/6) / 2 = 2/3
    assert mean_pass_at_k(correct, 2) == pytest.approx(2 / 3)
    assert pass_k_values(32) == [1, 2, 4, 8, 16, 32]
    assert pass_k_values(3) == [1, 2]
    assert pass_k_values(1) == [1]


# ------------------------------------------------------------------------------------- majority vote --

def test_majority_vote_ties_go_to_the_earliest_answer():
    # 5 and 7 both have 2 votes; 5 appears first (index 0) -> 5 wins, with the verdict of its first occurrence
    assert majority_vote(["5", "7", "7", "5", None], [True, False, False, True, False]) == ("5", True)
    # 7 appears first (index 1, index 0 has no answer) -> 7 wins, wrong
    assert majority_vote([None, "7", "5", "5", "7"], [False, False, True, True, False]) == ("7", False)
    # a clear majority beats an earlier answer
    assert majority_vote(["1", "2", "2"], [True, False, False]) == ("2", False)
    # nobody answered: wrong
    assert majority_vote([None, None], [False, False]) == (None, False)


def test_vote_key_normalises_predictions():
    assert vote_key("$90^\\circ$") == vote_key("90") == "90"
    assert vote_key("1,000") == "1000"
    assert vote_key(None) is None and vote_key("  ") is None
    choices = ["3", "8/11", "5", "7"]
    # a letter, a letter with text, and the choice text all vote for choice B
    assert vote_key("B", choices) == vote_key("(B) 8/11", choices) == vote_key("8/11", choices) == "choice:B"
    # "1/2" and "0.5" are NOT merged (no sympy in the vote)
    assert vote_key("1/2") != vote_key("0.5")


def test_summary_of_problems():
    results = [
        # predictions 3,3,4,4 -> tie, "3" first -> verdict of index 0 (True) -> majority correct
        result("1", [True, True, False, False], ["3", "3", "4", "4"]),
        # predictions 1,2,2,None -> "2" wins (2 votes), verdict of its first occurrence (index 1, False)
        result("2", [True, False, False, False], ["1", "2", "2", None], finish=["stop", "stop", "length", "stop"]),
    ]
    m = summarize_problems(results)
    assert m["problems"] == 2 and m["n"] == 4
    assert m["avg"] == pytest.approx((2 / 4 + 1 / 4) / 2)  # 0.375
    # Pass@2: problem 1: 1 - C(2,2)/C(4,2) = 5/6; problem 2: 1 - C(3,2)/C(4,2) = 1/2; mean = 2/3
    assert m["pass_at_k"]["2"] == pytest.approx(2 / 3)
    assert m["pass_at_k"]["4"] == 1.0
    assert m["majority"] == pytest.approx(0.5)
    assert m["no_answer_rate"] == pytest.approx(1 / 8)
    assert m["truncated_rate"] == pytest.approx(1 / 8)
    assert m["mean_response_tokens"] == pytest.approx((10 + 20 + 30 + 40) / 4)


def test_summary_counts_timeouts_and_grading_errors_apart(tmp_path):
    r = result("1", [True, False, False, False])
    r.timed_out = [False, True, False, False]
    r.errors = [None, "timed out after 5 s", "worker died (exit code -9)", "worker died (exit code 11) on each of 3 attempts"]
    assert r.grading_failed() == [2, 3]  # a file from before the retries counts too
    m = summarize_problems([r, result("2", [True, True, True, True])])
    assert m["timed_out"] == 1 and m["grading_errors"] == 2
    # rewrite(): the whole file replaced, line for line what load() gives back
    file = ResponsesFile(tmp_path / "responses.jsonl")
    file.append([result("0", [False] * 4), r])
    loaded = file.load()
    loaded["1"].errors[2] = None
    file.rewrite(loaded.values())
    assert [x.errors for x in file.load().values()] == [[None] * 4, [None, "timed out after 5 s", None, r.errors[3]]]


def test_breakdown_by_scalar_and_list_fields():
    results = [
        result("1", [True, True], metadata={"task": "geometry", "skills": ["algebraic", "geometry"]}),
        result("2", [False, True], metadata={"task": "geometry", "skills": ["algebraic"]}),
        result("3", [False, False], metadata={"task": "figure qa"}),
    ]
    by_task = breakdown(results, "task")
    assert list(by_task) == ["figure qa", "geometry"]
    assert by_task["geometry"] == {"problems": 2, "avg": pytest.approx((1.0 + 0.5) / 2), "majority": 0.5}
    # problem 2's majority: predictions "0","1" tie -> "0" (index 0, wrong); problem 1: "0" (right)
    by_skill = breakdown(results, "skills")
    # problem 1 counts under both of its skills; problem 3 has none
    assert by_skill["algebraic"]["problems"] == 2 and by_skill["geometry"]["problems"] == 1
    assert by_skill["(none)"] == {"problems": 1, "avg": 0.0, "majority": 0.0}
    # numeric levels sort as numbers
    levels = breakdown([result(str(i), [True], metadata={"level": lv}) for i, lv in enumerate([10, 2, 1])], "level")
    assert list(levels) == ["1", "2", "10"]


def test_empty_response_is_graded_wrong_without_crash():
    from mhpo_vl.grading import grade_one
    from mhpo_vl.types import Sample

    sample = Sample(id="1", source="t", split="test", question="1+1?", answer="2", answer_type="integer")
    verdict = grade_one(sample, "")
    assert verdict.correct is False and verdict.prediction is None
    r = result("1", [verdict.correct], [verdict.prediction])
    assert summarize_problems([r])["avg"] == 0.0 and summarize_problems([r])["no_answer_rate"] == 1.0


# ------------------------------------------------------------------------------------ responses file --

def test_responses_file_round_trip_and_resume(tmp_path):
    f = ResponsesFile(tmp_path / "b" / "responses.jsonl")
    assert f.load() == {}
    f.append([result("1", [True, False]), result("2", [False, False])])
    f.append([result("3", [True, True])])
    loaded = f.load()
    assert list(loaded) == ["1", "2", "3"]
    assert loaded["3"].correct == [True, True] and loaded["1"].predictions == ["0", "1"]


def test_corrupt_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text(result("1", [True]).to_json() + "\n{not json\n" + result("3", [True]).to_json() + "\n")
    with pytest.raises(ValueError, match=r"responses.jsonl: line 2: corrupt JSON"):
        ResponsesFile(path).load()


def test_line_with_wrong_shape_is_an_error(tmp_path):
    path = tmp_path / "responses.jsonl"
    bad = json.loads(result("1", [True, False]).to_json())
    bad["correct"] = [True]
    path.write_text(result("0", [True, True]).to_json() + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 2: field 'correct' must be a list of 2"):
        ResponsesFile(path).load()
    del bad["correct"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 1: missing field\(s\) correct"):
        ResponsesFile(path).load()


def test_duplicate_id_is_an_error(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text(result("1", [True]).to_json() + "\n" + result("1", [False]).to_json() + "\n")
    with pytest.raises(ValueError, match="line 2: problem id '1' appears twice"):
        ResponsesFile(path).load()


def test_unfinished_last_line_is_cut_off_and_resampled(tmp_path, capsys):
    path = tmp_path / "responses.jsonl"
    whole = result("1", [True]).to_json() + "\n"
    path.write_text(whole + result("2", [True]).to_json()[:25])  # killed mid-write
    loaded = ResponsesFile(path).load()
    assert list(loaded) == ["1"]
    assert "line 2 is an unfinished write" in capsys.readouterr().err
    assert path.read_text() == whole  # the next append starts on a clean line
    # a complete record that only lacks its newline is kept
    path.write_text(whole + result("2", [False]).to_json())
    assert list(ResponsesFile(path).load()) == ["1", "2"]
    assert path.read_text().endswith("\n")


def test_run_settings_must_match_to_resume(tmp_path):
    settings = {"model": "m", "n": 4, "temperature": 1.0}
    check_run_settings(tmp_path / "b", settings)
    check_run_settings(tmp_path / "b", dict(settings))  # same settings: fine
    with pytest.raises(ValueError, match=r"n: file has 4, now 8.*--overwrite"):
        check_run_settings(tmp_path / "b", {**settings, "n": 8})


# ------------------------------------------------------------------------------------------- tables --

def _summary(label: str, avgs: dict[str, float], n: int = 4) -> dict:
    return {
        "model": label, "model_label": label,
        "sampling": {"n": n, "temperature": 1.0, "top_p": 0.7, "max_tokens": 16, "seed": 0},
        "benchmarks": {b: {"metrics": {"avg": a, "majority": a, "pass_at_k": {"1": a}, "n": n, "problems": 3,
                                       "format_rate": 0.0, "no_answer_rate": 0.0, "truncated_rate": 0.0,
                                       "mean_response_tokens": 5.0, "timed_out": 0},
                           "breakdowns": {}} for b, a in avgs.items()},
        "average": sum(avgs.values()) / len(avgs),
    }


def test_comparison_table_deltas_vs_first_run():
    base = _summary("base", {"mathvista": 0.678, "mathvision": 0.252})
    mhpo = _summary("mhpo", {"mathvista": 0.718, "mathvision": 0.305, "mathverse": 0.567})
    table, notes = comparison_table([base, mhpo], ["base", "mhpo"])
    lines = table.splitlines()
    assert lines[0] == "| Run | mathvista | mathvision | mathverse | Avg. |"
    # avg over the benchmarks both runs have: base (67.8+25.2)/2 = 46.5, mhpo (71.8+30.5)/2 = 51.15 -> 51.1 / 51.2
    assert lines[2] == "| base | 67.8 (+0.0) | 25.2 (+0.0) | – | 46.5 (+0.0) |"
    assert lines[3].startswith("| mhpo | 71.8 (+4.0) | 30.5 (+5.3) | 56.7 | 51.")
    assert "(+4.7)" in lines[3] or "(+4.6)" in lines[3]  # 51.15 - 46.5 = 4.65
    assert notes and "left out: mathverse" in notes[0]


def test_summary_markdown_has_main_table_and_breakdowns():
    s = _summary("tiny", {"mathvista": 0.5, "math500": 0.25})
    s["benchmarks"]["mathvista"]["breakdowns"] = {"task": {"geometry": {"problems": 3, "avg": 0.5, "majority": 1.0}}}
    text = summary_markdown(s)
    assert "| Model | mathvista | math500 | Avg. |" in text
    assert "| tiny | 50.0 | 25.0 | 37.5 |" in text
    assert "### mathvista by task" in text and "| geometry | 3 | 50.0 | 100.0 |" in text
