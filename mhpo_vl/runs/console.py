"""What the user sees while a run works, apart from what libraries print.

`capture(log_file)` sends everything written to file descriptors 1 and 2 into `log_file`: Python's print and
logging (vLLM, transformers, DeepSpeed), warnings, and C/C++ writes (torch, vLLM kernels) alike, also from child
processes started inside the block (the grader's workers), because the descriptors themselves are redirected
(os.dup2), not just `sys.stdout`. The package's own output goes through `line`/`progress` to the terminal descriptors saved
before the redirection: set-up status, progress bars, one line per validation. With `verbose=True` nothing is
redirected and libraries print live.

An exception leaving `capture` restores the terminal first, shows the last lines of the log (a library's reason
for a failure is often printed there just before it raises) and the log's path; Python then prints the
traceback as usual. Only the main process (RANK 0, or no RANK) prints status and progress; error lines come from
every process.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from mhpo_vl.distributed import launcher_rank

LOG_TAIL_LINES = 25  # log lines shown when a run fails
_HEADER = "==== mhpo-vl"  # starts the log's part of each process that captures into it

_terminal: TextIO | None = None  # the saved terminal while output is captured; None = not captured


def log_path(output_dir: str | Path, name: str) -> Path:
    """`<output_dir>/logs/<name>.log`; other ranks of a multi-process run write `<name>.rank<R>.log`."""
    rank = launcher_rank()
    return Path(output_dir) / "logs" / (f"{name}.log" if rank == 0 else f"{name}.rank{rank}.log")


def is_main_process() -> bool:
    """torchrun/accelerate set RANK in every process; a plain `mhpo-vl train` has none."""
    return launcher_rank() == 0


def terminal() -> TextIO:
    """The user's terminal: the saved descriptor while output is captured, else stderr."""
    return _terminal if _terminal is not None else sys.stderr


def line(text: str, *, error: bool = False) -> None:
    """One line for the user (main process only, unless `error`), printed around any active progress bar."""
    if not (error or is_main_process()):
        return
    from tqdm.auto import tqdm

    tqdm.write(text, file=terminal())


def progress(**tqdm_kwargs):
    """A tqdm bar on the terminal, shown by the main process only."""
    from tqdm.auto import tqdm

    disable = tqdm_kwargs.pop("disable", False) or not is_main_process()
    return tqdm(file=terminal(), disable=disable, dynamic_ncols=True, **tqdm_kwargs)


@contextmanager
def capture(log_file: str | Path, *, verbose: bool = False) -> Iterator[Path | None]:
    """Within the block, fds 1 and 2 write (append) to `log_file`; yields its path, or None when `verbose`."""
    global _terminal
    if verbose or _terminal is not None:  # verbose, or already captured by an enclosing block
        yield None
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    header = f"{_HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n"
    os.write(log_fd, header.encode())
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    notices = _NoticeHandler()  # our own warnings (resume fallbacks, stale locks...) are for the user
    logging.getLogger("mhpo_vl").addHandler(notices)
    failure: BaseException | None = None
    try:
        yield log_file
    except BaseException as exc:
        failure = exc
        raise
    finally:
        logging.getLogger("mhpo_vl").removeHandler(notices)
        _restore(saved)
        if isinstance(failure, Exception):  # not for Ctrl-C or sys.exit
            _show_log_tail(log_file)
        if failure is not None:
            _append_traceback(log_file, failure)


class _NoticeHandler(logging.Handler):
    """mhpo_vl's own WARNING+ records: on the terminal (as `warning: ...`) and in the log, while output is captured."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname.lower()}: {record.getMessage()}"
            line(text, error=record.levelno >= logging.ERROR)
            print(text, file=sys.stderr, flush=True)  # fd 2 is the log file here
        except Exception:
            self.handleError(record)


def _restore(saved: tuple[int, int]) -> None:
    global _terminal
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)
    if _terminal is not None:
        _terminal.close()
    _terminal = None


def _show_log_tail(log_file: Path) -> None:
    """The last lines this process logged (the log is appended to by every resume of a run; each run's part
    starts with a `_HEADER` line)."""
    lines = log_file.read_text(errors="replace").splitlines()
    starts = [i for i, text in enumerate(lines) if text.startswith(_HEADER)]
    mine = lines[starts[-1] + 1 if starts else 0 :][-LOG_TAIL_LINES:]
    if mine:
        print(f"---- last {len(mine)} lines of {log_file} (third-party output of this run) ----", file=sys.stderr)
        for text in mine:
            print(f"  | {text}", file=sys.stderr)
    print(f"---- full log: {log_file}; the error follows ----", file=sys.stderr, flush=True)


def _append_traceback(log_file: Path, exc: BaseException) -> None:
    """The log tells the whole story on its own: the traceback the terminal shows is written there too."""
    import traceback

    with open(log_file, "a") as f:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
