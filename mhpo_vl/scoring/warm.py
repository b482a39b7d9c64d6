"""Imported by `mhpo-vl score`'s pool forkserver (``preload``): the grader's warm-up (``mhpo_vl.grading.warm``) plus
the MathVision scorer's old-style LaTeX parser, so every scoring worker starts warm. Only the scorers need this;
the training reward's workers preload ``mhpo_vl.grading.warm`` alone and never load a scorer.
"""
import mhpo_vl.grading.warm  # noqa: F401  (the grader's warm-up)
from mhpo_vl.scoring.mathvision import latex_value

latex_value("\\frac{1}{2}+\\sqrt{2}")
