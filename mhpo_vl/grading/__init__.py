"""Answer grading shared by the training reward and evaluation.

extract.py (find the answer), normalize.py (surface forms), choices.py (multiple choice), equivalence.py
(math-verify and numbers), format.py (<think>...</think> then \\boxed{}), pool.py (process pool with a hard
per-answer timeout), grader.py (Verdict, grade_one, Grader), reward.py (RewardFunction).
Importing this package does not import sympy or math-verify; the first comparison that needs them does.
"""
from mhpo_vl.grading.grader import Grader, Verdict, grade_one, is_correct
from mhpo_vl.grading.reward import RewardFunction, RewardOutput

__all__ = ["Grader", "Verdict", "grade_one", "is_correct", "RewardFunction", "RewardOutput"]
