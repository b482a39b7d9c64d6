"""Imported by the grading pools' forkserver (``preload``): importing sympy and math-verify and building the ANTLR
LaTeX parser's caches costs seconds; done once here, every worker forked from the server starts warm, including
the replacement for a worker killed after a timeout. Importing this module anywhere else only wastes that time.
The benchmark scorers (``mhpo-vl score``) warm their own parser on top of this: ``mhpo_vl.scoring.warm``.
"""
from mhpo_vl.grading.equivalence import answers_equivalent

answers_equivalent("\\frac{1}{2}", "0.5", "expression", None)
answers_equivalent("x^2", "x \\cdot x", "expression", None)
