"""`mhpo-vl score --benchmark NAME --predictions IN.jsonl --out OUT.jsonl [--mode strict|official]`

Scores existing model outputs with a benchmark's own rules (docs/scoring.md). Each input line is the benchmark's
row, with its original fields, plus the raw model output in ``response`` (``--response-field`` to name another
field, e.g. MathVerse's ``model_answer``). Each output line is the input row plus ``prediction`` and ``correct``
(and ``extraction`` for MathVista rows extracted here, ``score_error`` for a row whose scoring timed out or failed:
it counts as wrong). The output is written to a temporary file beside it and renamed over ``--out`` only when every
row is scored: an interrupted run leaves the previous output (or none), and ``--out`` naming the input itself (after
resolving symlinks and hard links) is refused before anything is written.

With ``--reference`` (the benchmark's original file) rows are looked up by id and may carry only the id and the
response; an id not in the benchmark, or a gold field that differs from the benchmark's, is a bad row.
Every line is checked before any is scored: a line that is not JSON or lacks a field the benchmark needs stops the
command with an error naming the line and field, unless ``--skip-bad-rows``, which scores the others and lists the
skipped lines in the summary. Accuracy is over the scored rows; with skipped rows the summary also gives it with them
counted wrong (``accuracy_with_skipped_as_wrong``). A line that is not valid UTF-8 is a bad line (the field holding
the bad bytes is named); a JSON ``\\ud800``-style lone surrogate is kept as it came and written back as the same
escape. Responses longer than 65,536 characters are cut to their last 65,536 before extraction (the final answer is
at the end). The summary goes to stderr; exit code 0, or 2 for bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mhpo_vl.runs.atomic_io import atomic_text_output, same_file
from mhpo_vl.scoring import MATHVISTA, MODES, SCORERS, load_reference, merge_reference, score_row, validate_row

SUMMARY_LIST_LIMIT = 20
_BLANK = object()  # marks a blank line (not a row; counted in the summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=SCORERS, help="whose rules to apply")
    parser.add_argument("--predictions", required=True, help="input JSONL: benchmark rows plus the model's response")
    parser.add_argument("--out", required=True, help="output JSONL (overwritten)")
    parser.add_argument("--mode", choices=MODES, default="strict",
                        help="MathVista only: 'official' reproduces calculate_score exactly, including its "
                             "nearest-choice fallback; 'strict' (default) drops that fallback. Other benchmarks "
                             "have one rule set and ignore this")
    parser.add_argument("--response-field", default="response", help="field holding the raw model output (default: response)")
    parser.add_argument("--reference", default=None,
                        help="the benchmark's original file (e.g. MathVista testmini.json, MathVision testmini.jsonl): "
                             "rows are looked up by id (pid / id / sample_index / unique_id), fields they lack are "
                             "filled from it, and an unknown id or a gold field that differs is a bad row")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="score the valid rows and list the bad ones instead of stopping at the first bad row")
    parser.add_argument("--num-workers", type=int, default=2, help="scoring processes (default 2)")
    parser.add_argument("--timeout-s", type=float, default=10.0,
                        help="per-row time limit; a row over it is wrong with score_error set (default 10)")


def _read_rows(path: Path):
    """(line number, parsed object or None, error or None) for each line; a blank line gives (n, _BLANK, None).
    Read as bytes: a line that is not UTF-8 is a bad line, not a crash halfway through the file."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, _invalid_utf8(raw, exc)
                continue
            if not line.strip():
                yield number, _BLANK, None
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def _invalid_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """Names the field holding the bad bytes when the line is otherwise JSON (undecodable bytes are kept as
    surrogate escapes to find them)."""
    where = f"byte 0x{raw[exc.start]:02x}, the line's byte {exc.start + 1}"
    try:
        row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return f"invalid UTF-8 ({where})"
    fields = [key for key, value in row.items() if _has_escaped_bytes(value)] if isinstance(row, dict) else []
    named = f" in field {fields[0]!r}" if fields else ""
    return f"invalid UTF-8{named} ({where}); re-encode the file as UTF-8"


def _has_escaped_bytes(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_escaped_bytes(k) or _has_escaped_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_escaped_bytes(v) for v in value)
    return False


def _json_line(row: dict) -> tuple[str, bool]:
    """(the row as one JSON line, whether it needed ASCII escapes). Non-ASCII text is written as itself; a row
    holding a lone surrogate (valid in JSON, not encodable as UTF-8) is written with \\uXXXX escapes instead,
    which round-trip to the same string."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return text + "\n", False
    except UnicodeEncodeError:
        return json.dumps(row, ensure_ascii=True) + "\n", True


def _complete_rows(args: argparse.Namespace, path: Path, reference: dict | None):
    """(line number, row completed from the reference or _BLANK or None, error) for each line."""
    for number, row, error in _read_rows(path):
        if error is None and row is not _BLANK and reference is not None:
            row, error = merge_reference(args.benchmark, row, reference) if isinstance(row, dict) else (row, None)
        if error is None and row is not _BLANK:
            error = validate_row(args.benchmark, row, args.response_field)
        yield number, row, error


def _check_input(args: argparse.Namespace, path: Path, reference: dict | None) -> tuple[list[tuple[int, str]], int]:
    """(bad lines with the reason, number of blank lines)."""
    bad, blank = [], 0
    for number, row, error in _complete_rows(args, path, reference):
        if row is _BLANK:
            blank += 1
        elif error:
            bad.append((number, error))
    return bad, blank


@dataclass
class _Tally:
    scored: int = 0
    correct: int = 0
    timeouts: int = 0
    failures: int = 0
    escaped: int = 0  # rows written with \\uXXXX escapes (they hold a lone surrogate)
    failed_rows: list[str] = field(default_factory=list)

    def add(self, row: dict, result) -> str:
        """Record one scored row (``result`` from the pool) and return its output line."""
        if result.error is None:
            row.update(result.value)
        else:
            row.update({"prediction": None, "correct": False, "score_error": result.error})
            self.timeouts += result.timed_out
            self.failures += not result.timed_out
            if len(self.failed_rows) < SUMMARY_LIST_LIMIT:
                self.failed_rows.append(f"id {row.get('pid', row.get('id', '?'))}: {result.error}")
        line, needed_escapes = _json_line(row)
        self.escaped += needed_escapes
        self.scored += 1
        self.correct += bool(row["correct"])
        return line


def run(args: argparse.Namespace) -> int:
    path, out_path = Path(args.predictions), Path(args.out)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    for flag, other in (("--predictions", path), ("--reference", args.reference)):
        if other is not None and same_file(out_path, other):
            print(f"error: --out {out_path} is the {flag} file ({Path(other).resolve()}); scoring would replace its "
                  "own input: write to another file", file=sys.stderr)
            return 2
    try:
        reference = load_reference(args.benchmark, args.reference) if args.reference else None
    except (OSError, ValueError) as exc:
        print(f"error: --reference: {exc}", file=sys.stderr)
        return 2
    bad, blank_lines = _check_input(args, path, reference)
    if bad and not args.skip_bad_rows:
        number, message = bad[0]
        more = f" ({len(bad) - 1} more bad lines; --skip-bad-rows scores the rest)" if len(bad) > 1 else ""
        print(f"error: {path} line {number}: {message}{more}", file=sys.stderr)
        return 2
    started = time.monotonic()
    tally = _score_all(args, path, reference, out_path)
    summary = {
        "benchmark": args.benchmark,
        "mode": args.mode if args.benchmark == MATHVISTA else "n/a (one rule set)",
        "scored": tally.scored,
        "correct": tally.correct,
        "accuracy": round(tally.correct / tally.scored, 6) if tally.scored else None,
        "accuracy_denominator": "scored rows" + (f" ({len(bad)} skipped bad rows not counted)" if bad else ""),
        "accuracy_with_skipped_as_wrong": (round(tally.correct / (tally.scored + len(bad)), 6)
                                           if tally.scored + len(bad) else None),
        "timeouts": tally.timeouts,
        "errors": tally.failures,
        "bad_rows_skipped": len(bad),
        "blank_lines": blank_lines,
        "rows_written_with_ascii_escapes": tally.escaped,
        "seconds": round(time.monotonic() - started, 2),
        "out": str(out_path),
    }
    print(json.dumps(summary), file=sys.stderr)
    _print_notes(summary, tally, bad, path)
    return 0


def _score_all(args: argparse.Namespace, path: Path, reference: dict | None, out_path: Path) -> _Tally:
    """Score every good row into ``out_path`` (renamed into place only when all are written)."""
    from mhpo_vl.grading.extract import tail
    from mhpo_vl.grading.pool import HardTimeoutPool

    def tasks():
        for _number, row, error in _complete_rows(args, path, reference):
            if row is not _BLANK and error is None:
                response = row.get(args.response_field)
                yield row, (args.benchmark, args.mode, {k: v for k, v in row.items() if k != args.response_field},
                            tail(response) if isinstance(response, str) else response)

    tally = _Tally()
    with HardTimeoutPool(args.num_workers, args.timeout_s, preload=["mhpo_vl.scoring.warm", "mhpo_vl.scoring"]) as pool, \
            atomic_text_output(out_path) as out:
        def flush(batch: list[tuple[dict, tuple]]) -> None:
            for (row, _), result in zip(batch, pool.imap(score_row, [task for _, task in batch])):
                out.write(tally.add(row, result))
                out.flush()  # progress shows in the temporary file (and survives there a kill -9)

        batch: list[tuple[dict, tuple]] = []
        for item in tasks():
            batch.append(item)
            if len(batch) >= 256:  # bounded memory: megabyte responses stream through
                flush(batch)
                batch = []
        flush(batch)
    return tally


def _print_notes(summary: dict, tally: _Tally, bad: list[tuple[int, str]], path: Path) -> None:
    if bad:
        print(f"  accuracy {tally.correct}/{tally.scored} is over the scored rows only: {len(bad)} bad row(s) were "
              f"skipped and are not in the denominator (counted wrong: {tally.correct}/{tally.scored + len(bad)} = "
              f"{summary['accuracy_with_skipped_as_wrong']})", file=sys.stderr)
    if tally.escaped:
        print(f"  {tally.escaped} row(s) hold a lone surrogate (invalid Unicode, e.g. a cut emoji); written with "
              "\\uXXXX escapes, exactly as read", file=sys.stderr)
    for line in tally.failed_rows:
        print(f"  scoring failed, counted wrong: {line}", file=sys.stderr)
    for number, message in bad[:SUMMARY_LIST_LIMIT]:
        print(f"  skipped {path} line {number}: {message}", file=sys.stderr)
    if len(bad) > SUMMARY_LIST_LIMIT:
        print(f"  ... and {len(bad) - SUMMARY_LIST_LIMIT} more skipped lines", file=sys.stderr)
