"""Preemption: SIGTERM (what schedulers send before the kill, e.g. SLURM at the end of a job's time or when it is
preempted, Kubernetes on eviction) and SIGUSR1 (SLURM's ``--signal=USR1@<seconds>`` warning ahead of it) only set
a flag. The training loop looks at it at its next safe point (after the current step, or when a warm-start ends),
saves a checkpoint with every rank agreeing, and exits with ``PREEMPTED_EXIT_CODE``. A rerun of the same command
resumes from that checkpoint and loses no finished step. See docs/reliability.md.

A second SIGTERM while the checkpoint is being written is ignored too (the save is what the grace period is for);
SIGKILL, which follows when the grace period runs out, cannot be caught: the previous checkpoint stays intact.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry". Distinct from 1 (an error),
# 2 (settings / run directory refused), 3 (diverged) and from 128+15 = 143, which a shell reports for a process
# that SIGTERM killed without saving: 75 means a checkpoint was written and a rerun continues from it.
PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised out of ``Trainer.fit`` after the preemption checkpoint was written (the CLI exits with
    PREEMPTED_EXIT_CODE)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = f"saved {checkpoint}" if checkpoint else "no checkpoint saved (trainer.save_every=0)"
        super().__init__(f"{signal_name} received: stopped after step {step}, {where}; rerun the same command to "
                         "continue from it")


class PreemptionFlag:
    """``with PreemptionFlag() as flag:`` installs the handlers (main thread only: Python delivers signals there)
    and restores the previous ones on exit. ``flag.received`` is the name of the first signal caught, or None."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():  # elsewhere (a notebook thread): not installed
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
