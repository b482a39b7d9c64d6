"""A reward function from a file: ``reward.function: path/to/file.py:name`` (EasyR1's ``reward_function`` spelling).

The function takes one response and returns its reward::

    def name(sample: mhpo_vl.types.Sample, response: str) -> float | dict[str, float]

``sample`` is the problem (``id``, ``question``, ``answer`` = the gold answer, ``answer_type``, ``choices``,
``precision``, ``unit``, ``metadata``; ``images`` is empty: pixels stay in the trainer). A dict must hold ``score``
(the reward); ``correct`` (true/false or 1/0) says whether the answer is right (``reward/accuracy``,
``val/accuracy``, the best checkpoint) and ``format_ok`` whether it is well formed (``reward/format_rate``); every
other key is a named component whose mean is logged as ``reward/fn/<key>`` (``val/reward/fn/<key>`` in
validation). Without ``correct`` the answer is graded by the built-in grader as well (in the same worker, within
the same timeout); without ``format_ok`` the built-in format check (``reward.require_think``) decides.

Where it runs: in worker processes of a :class:`~mhpo_vl.grading.pool.HardTimeoutPool`, as the built-in grader
does, with the same per-answer timeout (``reward.timeout_s``) and memory limit; every worker imports the file when
it starts (a replacement after a timeout too), so module-level set-up is paid once per worker, not per answer. The
built-in grader (``mhpo_vl.grading.grade_one``) can be called from it: the worker runs it on its main thread.

What a failure does: an exception or a timeout in the function is counted (``reward/grading_errors``,
``reward/timeouts``), logged with the row (``<prompt id>#<k>``, the k-th response to that prompt) and the last
line of the traceback with the place in the user's file, and the row gets a neutral reward, the mean of the other
responses to the same prompt (advantage 0: it neither pushes nor pulls the policy), never a silent 0.
``reward.max_consecutive_failures`` failures in a row stop the run with :class:`RewardFunctionError`.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import logging
import math
import numbers
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mhpo_vl.config.schema import ConfigError
from mhpo_vl.grading.extract import tail
from mhpo_vl.grading.format import format_ok as check_format
from mhpo_vl.grading.grader import MAX_ANSWER_CHARS, Verdict, extract_prediction, grade_one
from mhpo_vl.grading.pool import HardTimeoutPool
from mhpo_vl.grading.reward import RewardOutput
from mhpo_vl.types import Sample

log = logging.getLogger(__name__)

RESERVED_KEYS = ("score", "correct", "format_ok")
DEFAULT_NAME = "main"  # EasyR1: a path without ":name" names the function `main`


class RewardFunctionError(ConfigError):
    """The user's reward function (``reward.function``) failed ``reward.max_consecutive_failures`` times in a row,
    or cannot be loaded. A user error: the CLI prints it as one line."""


# ------------------------------------------------------------------------------------------- the spec -----


def parse_spec(spec: str) -> tuple[Path, str]:
    """``"path/to/file.py:name"`` -> (path, name); ``"file.py"`` -> (path, "main") as in EasyR1."""
    path, sep, name = spec.rpartition(":")
    if not sep or not name.isidentifier():  # no ":name" (a ":" inside the path is not a separator)
        return Path(spec), DEFAULT_NAME
    return Path(path), name


def check_spec(spec: str) -> tuple[Path, str]:
    """The file exists, is Python that parses, and binds ``name`` at its top level (a def, a class, an assignment
    or an import). Read, never run: the file is first executed in the grader's workers. ValueError says why."""
    path, name = parse_spec(spec)
    if not path.is_file():
        raise ValueError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    if path.suffix != ".py":
        raise ValueError(f"{path}: not a .py file (expected path/to/file.py:function_name)")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: invalid Python ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    bound = _top_level_names(tree.body)
    if name not in bound:
        functions = sorted(n for n, kind in bound.items() if kind == "def")
        raise ValueError(f"{path} defines no {name!r} at its top level (functions there: "
                         f"{', '.join(functions) or 'none'})")
    if bound[name] == "async def":
        raise ValueError(f"{path}: {name!r} is an async function; the reward is called synchronously")
    return path, name


def _top_level_names(body: list[ast.stmt]) -> dict[str, str]:
    """Names bound by module-level statements (also inside top-level if / try / with blocks) -> their kind."""
    out: dict[str, str] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = "def"
        elif isinstance(node, ast.AsyncFunctionDef):
            out[node.name] = "async def"
        elif isinstance(node, ast.ClassDef):
            out[node.name] = "class"
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        out.setdefault(leaf.id, "value")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out.setdefault(alias.asname or alias.name.split(".")[0], "import")
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            for block in blocks:
                for key, kind in _top_level_names(block).items():
                    out.setdefault(key, kind)
    return out


def load_function(path: str | Path, name: str) -> Callable[..., Any]:
    """Import ``path`` as a module of its own and return its ``name`` (which must be callable)."""
    path = Path(path).resolve()
    module_name = f"mhpo_vl_user_reward_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TypeError(f"{path}: {name} is {type(fn).__name__}, not a function")
    return fn


# ------------------------------------------------------------------------------------- in the workers -----

# (path, name) -> the loaded function, or the reason it could not be loaded (the task reports it)
_LOADED: dict[tuple[str, str], Callable[..., Any] | str] = {}


def _load_in_worker(path: str, name: str) -> None:
    """The pool's warm-up: import the user's file once per worker. A failure is kept and reported by every task
    (a warm-up that raised would only say "pool workers fail to start")."""
    try:
        _LOADED[(path, name)] = load_function(path, name)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in user code too: reported, not a dead worker
        _LOADED[(path, name)] = f"importing it failed: {describe_exception(exc, path)}"


def _function(path: str, name: str) -> Callable[..., Any]:
    if (path, name) not in _LOADED:  # a worker started without the warm-up (cannot happen through the pool)
        _load_in_worker(path, name)
    fn = _LOADED[(path, name)]
    if isinstance(fn, str):
        raise RuntimeError(fn)
    return fn


def _check_loaded(path: str, name: str) -> str:
    """A task: did this worker load the function? Its qualified name, or RuntimeError with why not."""
    fn = _function(path, name)
    return getattr(fn, "__qualname__", name)


def _score(path: str, name: str, sample: Sample, response: str, require_think: bool) -> tuple:
    """A task: ("ok", score, correct, format_ok | None, components) or ("error", what went wrong)."""
    fn = _function(path, name)
    try:
        result = fn(sample, response)
    except Exception as exc:  # the user's error, described for the log; the worker goes on
        return ("error", describe_exception(exc, path))
    try:
        score, correct, formatted, components = normalize_result(result)
    except (TypeError, ValueError) as exc:
        return ("error", f"{exc}")
    if correct is None:  # the built-in grader decides whether the answer is right
        correct = grade_one(sample, tail(response), require_think=require_think).correct
    return ("ok", score, correct, formatted, components)


def describe_exception(exc: BaseException, user_file: str | Path) -> str:
    """The traceback's last line (``ValueError: ...``) and the innermost place in the user's file."""
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    user = str(Path(user_file).resolve())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(Path(f.filename).resolve()) == user]
    if frames:
        last += f" (at {Path(user_file).name}:{frames[-1].lineno}, in {frames[-1].name})"
    return last


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number}: not a finite number")
    return number


def normalize_result(result: Any) -> tuple[float, bool | None, bool | None, dict[str, float]]:
    """A float, or a dict with "score" (and optional "correct", "format_ok", named components) -> (score,
    correct or None, format_ok or None, components). TypeError / ValueError naming what is wrong."""
    if not isinstance(result, dict):
        return _number(result, "the returned reward"), None, None, {}
    if "score" not in result:
        hint = " (EasyR1's compute_score names it 'overall')" if "overall" in result else ""
        raise ValueError(f"the returned dict has no 'score' (keys: {', '.join(map(str, result)) or 'none'}){hint}")
    flags: dict[str, bool | None] = {}
    for key in ("correct", "format_ok"):
        value = result.get(key)
        if value is not None and not isinstance(value, bool):
            value = bool(_number(value, f"'{key}'"))
        flags[key] = value
    components = {}
    for key, value in result.items():
        if key in RESERVED_KEYS:
            continue
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"component name {key!r}: use a non-empty string without '/'")
        components[key] = _number(value, f"component {key!r}")
    return _number(result["score"], "'score'"), flags["correct"], flags["format_ok"], components


# -------------------------------------------------------------------------------------- in the trainer ----


class UserRewardFunction:
    """``reward_fn(samples, responses, truncated=flags) -> RewardOutput`` with the user's function, graded in a
    pool of ``num_workers`` processes with a hard ``timeout_s`` per answer. Loads the function in a worker before
    returning (an import error is a :class:`RewardFunctionError` now, not at the first step). Call close()."""

    def __init__(self, spec: str, *, num_workers: int = 2, timeout_s: float = 5.0, require_think: bool = True,
                 max_consecutive_failures: int = 32, truncated_reward: float | None = None,
                 memory_limit_mb: int | None = 4096):
        try:
            path, name = check_spec(spec)
        except ValueError as exc:
            raise RewardFunctionError(f"reward.function={spec}: {exc}") from None
        self.spec, self.path, self.name = spec, str(path.resolve()), name
        self.require_think = require_think
        self.max_consecutive_failures = max_consecutive_failures
        self.truncated_reward = truncated_reward
        self.failures_in_a_row = 0
        self.failures_total = 0
        self._components: dict[str, list[float]] = {}  # name -> [sum, count] since the last pop
        self._pool = HardTimeoutPool(
            num_workers, timeout_s, warmup=functools.partial(_load_in_worker, self.path, name),
            preload=["mhpo_vl.grading.warm", "mhpo_vl.grading.grader", "mhpo_vl.grading.user_reward"],
            memory_limit_mb=memory_limit_mb)
        probe = self._pool.map(_check_loaded, [(self.path, name)])[0]
        if probe.error is not None:
            self.close()
            raise RewardFunctionError(f"reward.function={spec}: {probe.error.removeprefix('RuntimeError: ')}")

    def __call__(self, samples: list[Sample], responses: list[str],
                 truncated: list[bool] | None = None) -> RewardOutput:
        if len(samples) != len(responses) or (truncated is not None and len(truncated) != len(responses)):
            raise ValueError(f"{len(samples)} samples, {len(responses)} responses, "
                             f"{'no' if truncated is None else len(truncated)} truncated flags")
        light = [dataclasses.replace(s, images=[]) for s in samples]  # pixels stay here
        tasks = [(self.path, self.name, s, r, self.require_think) for s, r in zip(light, responses)]
        seen: dict[str, int] = {}
        rows: list[tuple[float | None, Verdict]] = []  # (reward or None when the function failed, verdict)
        for sample, response, result in zip(samples, responses, self._pool.map(_score, tasks)):
            k = seen[sample.id] = seen.get(sample.id, -1) + 1
            prediction = extract_prediction(sample, tail(response))
            if prediction is not None:
                prediction = prediction[:MAX_ANSWER_CHARS]
            formatted = check_format(response, self.require_think)
            value: tuple[Any, ...] = result.value if result.error is None else ("error", result.error)
            if value[0] == "ok":
                _, score, correct, format_flag, components = value
                self.failures_in_a_row = 0
                for key, number in components.items():
                    total = self._components.setdefault(key, [0.0, 0.0])
                    total[0] += number
                    total[1] += 1
                rows.append((score, Verdict(correct=bool(correct), prediction=prediction,
                                            format_ok=formatted if format_flag is None else format_flag)))
                continue
            self._failed(f"{sample.id}#{k}", value[1])
            rows.append((None, Verdict(correct=False, prediction=prediction, format_ok=formatted,
                                       timed_out=result.timed_out, error=f"reward.function: {value[1]}")))
        rewards = self._rewards(samples, rows, truncated)
        verdicts = [v for _, v in rows]
        return RewardOutput(rewards=rewards, verdicts=verdicts, accuracy=[float(v.correct) for v in verdicts],
                            format=[float(v.format_ok) for v in verdicts])

    def _failed(self, row: str, error: str) -> None:
        self.failures_in_a_row += 1
        self.failures_total += 1
        log.warning("reward.function failed on row %s (%d in a row, %d in all): %s", row, self.failures_in_a_row,
                    self.failures_total, error)
        if self.failures_in_a_row >= self.max_consecutive_failures:
            raise RewardFunctionError(
                f"reward.function={self.spec} failed on {self.failures_in_a_row} responses in a row "
                f"(reward.max_consecutive_failures={self.max_consecutive_failures}); the last, row {row}: {error}")

    def _rewards(self, samples: list[Sample], rows: list[tuple[float | None, Verdict]],
                 truncated: list[bool] | None) -> list[float]:
        """The scores, ``truncated_reward`` for responses cut at the limit (when set), and for a failed row the
        mean of the other rows of its prompt in this batch (0 when all of them failed)."""
        cut = truncated if truncated is not None and self.truncated_reward is not None else [False] * len(rows)
        done = [self.truncated_reward if c else score for (score, _), c in zip(rows, cut)]
        by_prompt: dict[str, list[float]] = {}
        for sample, value in zip(samples, done):
            if value is not None:
                by_prompt.setdefault(sample.id, []).append(value)
        neutral = {key: sum(values) / len(values) for key, values in by_prompt.items()}
        return [float(v) if v is not None else neutral.get(s.id, 0.0) for s, v in zip(samples, done)]

    def pop_component_totals(self) -> dict[str, tuple[float, float]]:
        """The named components' (sum, count) since the last call; the trainer logs their means per step and per
        validation (mhpo_vl.train.interfaces.ReportsRewardComponents)."""
        out = {key: (total[0], total[1]) for key, total in self._components.items()}
        self._components = {}
        return out

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.close()
