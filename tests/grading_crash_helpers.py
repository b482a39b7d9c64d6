"""A grader task that really crashes its worker: patched over ``mhpo_vl.grading.grader._grade_task`` by the tests of
dead grader workers. The parent pickles a reference to :func:`grade_or_crash`, so each worker imports this module on
its first task: it imports nothing heavy (``mhpo_vl.grading`` is preloaded in the workers), so that import fits in a
short grading timeout."""
from __future__ import annotations

import os
import time

from mhpo_vl.grading import grade_one

CRASH = "CRASH-THE-GRADER-WORKER"  # a response holding this kills its worker (os._exit(11): no exception, no reply)
SLOW = "GRADE-ME-SLOWLY"  # ... this takes 0.6 s, so a test can kill a worker while it grades
HANG = "GRADE-ME-NEVER"  # ... this sleeps 10 minutes: a timeout


def grade_or_crash(sample, response, boxed_only, require_think):
    if CRASH in response:
        os._exit(11)
    if SLOW in response:
        time.sleep(0.6)
    if HANG in response:
        time.sleep(600)
    return grade_one(sample, response, boxed_only=boxed_only, require_think=require_think)
