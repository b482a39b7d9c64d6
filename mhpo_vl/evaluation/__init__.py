"""Evaluation: sample -> grade -> metrics -> files, the one pipeline behind `mhpo-vl eval`, `eval-run` and the
trainer's validation.

suites.py (the evaluation suites and their groups), config.py (EvalConfig), plan.py (config -> the problems to
evaluate), pipeline.py (sample_and_grade, run_evaluation, run_validation), results.py (Avg@n / Pass@k / majority
vote, the resumable responses file, the summary tables). Importing this package loads no model, engine or grader.
"""
from mhpo_vl.evaluation.config import EvalConfig
from mhpo_vl.evaluation.pipeline import (
           GradedGroup,
           run_evaluation,
           run_validation,
           sample_and_grade,
           validation_metrics,
)
from mhpo_vl.evaluation.suites import SUITE_GROUPS, SUITES, EvalSuite, get_suite, parse_suites

__all__ = ["EvalConfig", "EvalSuite", "GradedGroup", "SUITES", "SUITE_GROUPS", "get_suite", "parse_suites",
           "run_evaluation", "run_validation", "sample_and_grade", "validation_metrics"]
