"""Evaluation metrics over graded samples, the resumable per-suite responses file, and the summary tables.

Every problem is sampled n times and each response graded by the training grader (:class:`mhpo_vl.grading.Grader`).
With c_i correct responses out of n for problem i, over P problems:

  Avg@n   (1/P) sum_i c_i / n. The MHPO paper's metric ("we sample n = 32 responses per prompt and report the expected
          pass rate (Avg@32)", Sec. 4.1): the accuracy of one sample, averaged over the n draws, less noisy than n=1.
  Pass@k  (1/P) sum_i [1 - C(n - c_i, k) / C(n, k)], k <= n: the unbiased estimator of the probability that at least
          one of k samples is correct (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1).
          Pass@1 equals Avg@n.
  Maj@n   (1/P) sum_i [the most frequent prediction of problem i is correct] (majority vote, "cons@n" in DAPO).
          Predictions are compared after normalisation (:func:`vote_key`); responses without an answer do not vote;
          a problem where no response has an answer counts as wrong. Ties go to the answer that reached the top count
          FIRST in sampling order (its earliest occurrence is earliest), so the vote is deterministic given the file.
          The vote's verdict is the grader's verdict on that answer's first occurrence.

Breakdowns (MathVista by task and skill, ...) are the same metrics restricted to the problems whose
``metadata[field]`` has a value; a list-valued field (MathVista ``skills``) counts the problem once under each item.

The responses file ``<out>/<suite>/responses.jsonl`` holds one JSON line per problem (``ProblemResult``), written
after each batch and fsync'ed, so a crash loses at most the batch in flight; a rerun reads it and samples only the
problems that are not in it yet. A corrupt line in the middle of the file is an error naming the line; an unterminated
LAST line (what a kill during a write leaves behind) is reported on stderr and cut off, and its problem is sampled again.
A response whose grading failed (``errors`` set, ``timed_out`` false: e.g. the grader's worker died on every retry) is
graded again by a rerun, which then rewrites the file whole (:meth:`ResponsesFile.rewrite`); timeouts stay timeouts.
The summaries count both: ``timed_out`` and ``grading_errors`` responses per suite.
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESPONSES_FILE = "responses.jsonl"
RUN_FILE = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
MISSING = "(none)"  # breakdown bucket of problems without the field


# ---------------------------------------------------------------------------------------------- metrics --


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al. 2021, Fig. 3), which never forms huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def avg_at_n(correct_PK: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the fraction of correct samples (problems may have different sample counts)."""
    if not correct_PK:
        raise ValueError("avg_at_n: no problems")
    for i, row in enumerate(correct_PK):
        if not row:
            raise ValueError(f"avg_at_n: problem {i} has no samples")
    return sum(sum(map(bool, row)) / len(row) for row in correct_PK) / len(correct_PK)


def mean_pass_at_k(correct_PK: Sequence[Sequence[bool]], k: int) -> float:
    if not correct_PK:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(pass_at_k(len(row), sum(map(bool, row)), k) for row in correct_PK) / len(correct_PK)


def pass_k_values(n: int) -> list[int]:
    """k = 1 and the powers of two up to n: [1, 2, 4, 8, 16, 32] for n = 32, [1, 2] for n = 3."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def vote_key(prediction: str | None, choices: Sequence[str] | None = None) -> str | None:
    """The form under which two predictions count as the same vote; None (no vote) for a missing/empty answer.

    Free-form: the grader's string normalisation (``grading.normalize.normalize_answer``: delimiters, units, degree
    signs, thousands separators removed), so "$90^\\circ$" and "90" vote together. Multiple choice: a prediction that
    names a letter ("B", "(B)", "(B) 8/11") or equals a choice's text votes for that choice, so "B" and the text of B
    vote together. Mathematical equivalence ("1/2" vs "0.5") is NOT merged: that would need sympy per pair.
    """
    if prediction is None:
        return None
    from mhpo_vl.grading.normalize import normalize_answer

    normalized = normalize_answer(prediction)
    if not normalized:
        return None
    if choices:
        from mhpo_vl.grading.choices import LETTERS, letter_of

        texts = [normalize_answer(c).lower() for c in choices]
        if texts.count(normalized.lower()) == 1:
            return f"choice:{LETTERS[texts.index(normalized.lower())]}"
        letter = letter_of(prediction, len(choices))
        if letter is not None:
            return f"choice:{letter}"
    return normalized


def majority_vote(keys: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, bool]:
    """(winning key, its verdict). Ties: the key whose first occurrence comes first. No votes: (None, False)."""
    if len(keys) != len(correct):
        raise ValueError(f"majority_vote: {len(keys)} keys but {len(correct)} verdicts")
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, False
    top = max(counts.values())
    for key, ok in zip(keys, correct):  # sampling order: the first key with the top count wins ties
        if key is not None and counts[key] == top:
            return key, bool(ok)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- one problem's line --


@dataclass
class ProblemResult:
    """One line of responses.jsonl: a problem, its n responses and their verdicts."""

    id: str
    question: str
    answer: str
    answer_type: str
    choices: list[str] | None
    prompt: str  # the rendered user turn (template applied), so a reader sees what the model saw
    responses: list[str]
    finish_reasons: list[str]
    num_tokens: list[int]
    predictions: list[str | None]
    correct: list[bool]
    format_ok: list[bool]
    timed_out: list[bool]
    errors: list[str | None]
    metadata: dict[str, Any] = field(default_factory=dict)

    PER_RESPONSE = ("responses", "finish_reasons", "num_tokens", "predictions", "correct", "format_ok", "timed_out", "errors")

    @property
    def n(self) -> int:
        return len(self.responses)

    @property
    def num_correct(self) -> int:
        return sum(self.correct)

    def grading_failed(self) -> list[int]:
        """Indices of the responses whose grading failed other than by a timeout (``Verdict.grading_failed``)."""
        return [i for i, (error, timed_out) in enumerate(zip(self.errors, self.timed_out))
                if error is not None and not timed_out]

    def vote(self) -> tuple[str | None, bool]:
        return majority_vote([vote_key(p, self.choices) for p in self.predictions], self.correct)

    def to_json(self) -> str:
        # default=str: adapters may leave non-JSON values in metadata (dates, numpy scalars); their text is kept.
        return json.dumps(asdict(self), ensure_ascii=False, default=str)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ProblemResult:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        names = [f for f in cls.__dataclass_fields__]
        missing = [f for f in names if f not in data and f != "metadata"]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        result = cls(**{k: data[k] for k in names if k in data})
        if not isinstance(result.responses, list) or not result.responses:
            raise ValueError(f"{where}: field 'responses' must be a non-empty list")
        for name in cls.PER_RESPONSE:
            value = getattr(result, name)
            if not isinstance(value, list) or len(value) != result.n:
                got = len(value) if isinstance(value, list) else type(value).__name__
                raise ValueError(f"{where}: field {name!r} must be a list of {result.n} (one per response), got {got}")
        return result


# ----------------------------------------------------------------------------------- the responses file --


class ResponsesFile:
    """Append-only JSONL of ProblemResults; the unit of resumption is one problem (all n samples or none)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, ProblemResult]:
        """Results by problem id, in file order. Corrupt line -> ValueError naming file and line."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = self._drop_unterminated_tail(raw)
        results: dict[str, ProblemResult] = {}
        for line_no, line in enumerate(raw.decode("utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{self.path}: line {line_no}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: corrupt JSON ({exc}); fix or delete that line (its problem is then "
                                 "sampled again), or use a fresh --output-dir") from None
            result = ProblemResult.from_dict(data, where)
            if result.id in results:
                raise ValueError(f"{where}: problem id {result.id!r} appears twice in the file")
            results[result.id] = result
        return results

    def _drop_unterminated_tail(self, raw: bytes) -> bytes:
        """A last line without its newline is a write cut short by a kill: cut it off (said on stderr)."""
        keep = raw.rfind(b"\n") + 1
        tail = raw[keep:]
        try:
            json.loads(tail)
            complete = True
        except ValueError:
            complete = False
        if complete:  # a whole record that only lacks its newline: keep it, add the newline
            with open(self.path, "ab") as handle:
                handle.write(b"\n")
            return raw + b"\n"
        line_no = raw[:keep].count(b"\n") + 1
        print(f"[mhpo-vl eval] {self.path}: line {line_no} is an unfinished write ({len(tail)} bytes, no newline; "
              "the run was interrupted while writing it); cutting it off, its problem will be sampled again",
              file=sys.stderr)
        with open(self.path, "r+b") as handle:
            handle.truncate(keep)
        return raw[:keep]

    def rewrite(self, results: Iterable[ProblemResult]) -> None:
        """Replace the file by ``results`` (its whole content, in order): the old file or the new one after a crash."""
        from mhpo_vl.runs.atomic_io import write_durably

        write_durably(self.path, "".join(r.to_json() + "\n" for r in results))

    def append(self, results: Iterable[ProblemResult]) -> None:
        """Write whole lines, then flush and fsync: what returns from here survives a crash."""
        lines = "".join(r.to_json() + "\n" for r in results)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


def check_run_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix samples drawn with different settings in one responses file; write run.json the first time."""
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: corrupt JSON ({exc})") from None
        differ = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if differ:
            lines = "; ".join(f"{k}: file has {old!r}, now {new!r}" for k, (old, new) in differ.items())
            raise ValueError(f"{out_dir} holds responses sampled with other settings ({lines}). Resuming would mix "
                             "them: use another --output-dir, or --overwrite to start this suite again")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- summaries --


def summarize_problems(results: Sequence[ProblemResult], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Avg@n, Pass@k, Maj@n and response statistics of a set of problems (fractions in [0, 1])."""
    if not results:
        raise ValueError("summarize_problems: no problems")
    n = min(r.n for r in results)
    correct_PK = [r.correct for r in results]
    ks = list(ks) if ks is not None else pass_k_values(n)
    tokens = [t for r in results for t in r.num_tokens]
    num_responses = len(tokens)
    return {
        "problems": len(results),
        "n": n,
        "avg": avg_at_n(correct_PK),
        "pass_at_k": {str(k): mean_pass_at_k(correct_PK, k) for k in ks if k <= n},
        "majority": sum(r.vote()[1] for r in results) / len(results),
        "format_rate": sum(sum(r.format_ok) for r in results) / num_responses,
        "no_answer_rate": sum(sum(p is None or not str(p).strip() for p in r.predictions) for r in results) / num_responses,
        "truncated_rate": sum(sum(f == "length" for f in r.finish_reasons) for r in results) / num_responses,
        "timed_out": sum(sum(r.timed_out) for r in results),
        "grading_errors": sum(len(r.grading_failed()) for r in results),  # graded again by a rerun of `eval`
        "mean_response_tokens": sum(tokens) / num_responses,
    }


def _field_values(metadata: dict[str, Any], field_name: str) -> list[str]:
    value = metadata.get(field_name)
    if value is None or value == "" or value == []:
        return [MISSING]
    if isinstance(value, (list, tuple)):
        return sorted({str(v) for v in value})
    return [str(value)]


def breakdown(results: Sequence[ProblemResult], field_name: str) -> dict[str, dict[str, Any]]:
    """{value: {"problems", "avg", "majority"}} of the problems grouped by ``metadata[field_name]``, sorted by value
    (problems lacking the field under "(none)"; a list value puts the problem under each of its items)."""
    groups: dict[str, list[ProblemResult]] = {}
    for result in results:
        for value in _field_values(result.metadata, field_name):
            groups.setdefault(value, []).append(result)
    out = {}
    for value in sorted(groups, key=_natural_key):
        members = groups[value]
        out[value] = {
            "problems": len(members),
            "avg": avg_at_n([r.correct for r in members]),
            "majority": sum(r.vote()[1] for r in members) / len(members),
        }
    return out


def _natural_key(text: str) -> tuple:
    """Levels "1".."10" in numeric order, names alphabetically, "(none)" last."""
    if text == MISSING:
        return (2, 0, "")
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0, text.lower())


def macro_average(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------- Markdown tables --


def pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align_first_left: bool = True) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    sep = [":--" if i == 0 and align_first_left else "--:" for i in range(len(header))]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The Table 1C-style main table (rows = model, columns = suites + Avg, Avg@n in %), then per-suite
    Pass@k / Maj@n / response statistics and the breakdown tables."""
    benches = summary["benchmarks"]
    names = list(benches)
    n_values = sorted({b["metrics"]["n"] for b in benches.values()})
    n_label = "/".join(str(n) for n in n_values)
    parts = [f"# Evaluation: {summary['model_label']}", ""]
    parts.append(f"Avg@{n_label} (%) — model `{summary['model']}`; sampling: temperature {summary['sampling']['temperature']}, "
                 f"top_p {summary['sampling']['top_p']}, max_tokens {summary['sampling']['max_tokens']}, "
                 f"seed {summary['sampling']['seed']}.")
    parts.append("")
    header = ["Model"] + names + ["Avg."]
    row = [summary["model_label"]] + [pct(benches[b]["metrics"]["avg"]) for b in names] + [pct(summary["average"])]
    parts += [markdown_table(header, [row]), ""]

    parts += ["## Per suite", ""]
    all_ks = sorted({int(k) for b in benches.values() for k in b["metrics"]["pass_at_k"]})
    header = ["Suite", "problems", "n", "Avg@n"] + [f"Pass@{k}" for k in all_ks] + [
        "Maj@n", "format", "no answer", "truncated", "mean tokens", "timeouts", "grading errors"]
    rows = []
    for name in names:
        m = benches[name]["metrics"]
        rows.append([name, m["problems"], m["n"], pct(m["avg"])]
                    + [pct(m["pass_at_k"].get(str(k))) for k in all_ks]
                    + [pct(m["majority"]), pct(m["format_rate"]), pct(m["no_answer_rate"]), pct(m["truncated_rate"]),
                       f"{m['mean_response_tokens']:.0f}", m["timed_out"], m.get("grading_errors", "–")])
    parts += [markdown_table(header, rows), ""]

    for name in names:
        for field_name, table in benches[name].get("breakdowns", {}).items():
            parts += [f"### {name} by {field_name}", ""]
            rows = [[value, v["problems"], pct(v["avg"]), pct(v["majority"])] for value, v in table.items()]
            parts += [markdown_table([field_name, "problems", "Avg@n", "Maj@n"], rows), ""]
    return "\n".join(parts).rstrip() + "\n"


def load_summary(path: str | Path) -> dict[str, Any]:
    """summary.json of an eval directory (the directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation summary at {path} (run `mhpo-vl eval ... --output-dir DIR` first)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("benchmarks"), dict):
        raise ValueError(f"{path}: not an evaluation summary (no 'benchmarks' object)")
    for name, bench in summary["benchmarks"].items():
        if not isinstance(bench, dict) or "avg" not in bench.get("metrics", {}):
            raise ValueError(f"{path}: suite {name!r} has no metrics.avg")
    return summary


def metric_of(bench: dict[str, Any], metric: str) -> float | None:
    """'avg', 'majority', or 'pass@K' from one suite's summary entry (None when that k was not computed)."""
    m = bench["metrics"]
    if metric == "avg":
        return m["avg"]
    if metric in ("maj", "majority"):
        return m["majority"]
    if metric.startswith("pass@"):
        return m["pass_at_k"].get(metric[5:])
    raise ValueError(f"unknown metric {metric!r}; valid: avg, maj, pass@K (K a computed k, e.g. pass@1)")


def comparison_table(summaries: Sequence[dict[str, Any]], labels: Sequence[str], metric: str = "avg") -> tuple[str, list[str]]:
    """Rows = runs, columns = suites + Avg.; each cell ``value (+delta vs the first run)``, as the paper's tables.

    Avg. is the macro average over the suites that EVERY run has (so rows are comparable); the returned notes
    say which suites were left out of it."""
    names: list[str] = []
    for s in summaries:
        names += [b for b in s["benchmarks"] if b not in names]
    common = [b for b in names if all(b in s["benchmarks"] for s in summaries)]
    notes = []
    if len(common) < len(names):
        notes.append(f"Avg. covers the suites every run has: {', '.join(common) or 'none'}; "
                     f"left out: {', '.join(b for b in names if b not in common)}.")

    def values(s: dict[str, Any]) -> dict[str, float | None]:
        v = {b: metric_of(s["benchmarks"][b], metric) if b in s["benchmarks"] else None for b in names}
        covered = [x for b in common if (x := v[b]) is not None]
        v["Avg."] = macro_average(covered) if covered and len(covered) == len(common) else None
        return v

    base = values(summaries[0])
    rows = []
    for s, label in zip(summaries, labels):
        v = values(s)
        row = [label]
        for col in names + ["Avg."]:
            value, base_value = v[col], base[col]
            cell = pct(value)
            if value is not None and base_value is not None:
                delta = 100 * (value - base_value)
                cell += f" ({delta:+.1f})"
            row.append(cell)
        rows.append(row)
    return markdown_table(["Run"] + names + ["Avg."], rows), notes
