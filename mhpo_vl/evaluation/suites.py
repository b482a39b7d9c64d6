"""The evaluation suites `mhpo-vl eval` knows (MathVista, MATH-500, ...): a plain table, name -> how to load, prompt,
break down and sample it; and the suite groups of the paper's tables (``vl``, ``text``).

Words: an evaluation SUITE is a problem set the model is evaluated on (this file); the benchmark SCORERS
(mhpo_vl/scoring/) apply a suite's own official scoring rules to existing outputs; the top-level benchmarks/ folder
holds PERFORMANCE benchmarks (speed, memory) of this code.

Sampling defaults and where they come from:
  n = 32            MHPO paper Sec. 4.1: "we sample n = 32 responses per prompt during inference and report the
                    expected pass rate (Avg@32)"; the same for every suite of Tables 1-4.
  temperature 1.0,  The MHPO paper does not state its evaluation temperature / top_p. Avg@32 is the protocol of DAPO
  top_p 0.7         (Yu et al. 2025, arXiv:2503.14476, Sec. 4.1: AIME "avg@32", inference "temperature 1.0 and topp
                    0.7"; also BytedTsinghua-SIA/DAPO inference/inference.py: SamplingParams(temperature=1.0,
                    top_p=0.7)), one of the paper's baselines, so we take its settings for every suite.
                    The suites' own leaderboards use greedy decoding with one sample (MathVista, MATH-Vision,
                    MathVerse): those numbers are not Avg@32 and are not comparable with these.
  max_tokens 2048   MHPO paper Sec. 4.1: maximum response length 2,048 tokens for the Qwen2.5 models (4,096 for
                    Qwen3-4B: pass --max-tokens 4096).

Prompts: each suite's own official prompt (see mhpo_vl/prompts.py for the source of each); Geometry3K and the
text-math sets have none, so they use the prompt the models are trained with here (``reason_boxed``, EasyR1's).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_N = 32
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.7
DEFAULT_MAX_TOKENS = 2048
DEFAULT_SEED = 0


@dataclass(frozen=True)
class EvalSuite:
    name: str
    dataset: str  # adapter name in mhpo_vl.datasets
    split: str | None  # default split
    template: str  # prompt template name in mhpo_vl.prompts
    breakdowns: tuple[str, ...] = ()  # Sample.metadata fields to report accuracy by
    has_images: bool = False
    dataset_options: dict[str, Any] = field(default_factory=dict)
    note: str = ""


SUITES: dict[str, EvalSuite] = {
    b.name: b
    for b in (
        EvalSuite("mathvista", "mathvista", "testmini", "mathvista", ("task", "skills"), has_images=True,
                  note="MathVista testmini (1,000 problems); official query hint per answer type (build_query.py)"),
        EvalSuite("mathvision", "mathvision", "testmini", "mathvision", ("subject", "level"), has_images=True,
                  note="MATH-Vision testmini (304 problems; --split mathvision=test for all 3,040)"),
        EvalSuite("mathverse", "mathverse", "testmini", "mathverse", ("problem_version", "subject"), has_images=True,
                  note="MathVerse testmini (3,940 rows: 788 problems x 5 image versions; the text-only file has "
                       "no images); official query_cot prompt"),
        EvalSuite("geometry3k", "geometry3k", "test", "reason_boxed", has_images=True,
                  note="Geometry3K test (601 problems); the training prompt (no official one)"),
        EvalSuite("math500", "math500", "test", "reason_boxed", ("subject", "level"),
                  note="MATH-500 (Lightman et al. 2023 split)"),
        EvalSuite("aime24", "aime24", None, "reason_boxed", note="AIME 2024 (30 problems)"),
        EvalSuite("aime25", "aime25", None, "reason_boxed", note="AIME 2025 (30 problems)"),
        EvalSuite("amc23", "amc23", None, "reason_boxed", note="AMC 2023 (40 problems)"),
        EvalSuite("hmmt25", "hmmt25", None, "reason_boxed", note="HMMT February 2025 (30 problems)"),
    )
}

# The groups of suites in the paper's tables, as --suites shorthands.
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    "vl": ("mathvista", "mathvision", "mathverse"),  # Table 1C
    "text": ("math500", "hmmt25", "amc23", "aime25", "aime24"),  # Tables 1A/1B, 2, 4
}


def get_suite(name: str) -> EvalSuite:
    if name not in SUITES:
        groups = ", ".join(f"{group} = {'+'.join(members)}" for group, members in SUITE_GROUPS.items())
        raise ValueError(f"unknown evaluation suite {name!r}; valid: {', '.join(SUITES)} (or a group: {groups})")
    return SUITES[name]


def parse_suites(names: str | Sequence[str]) -> list[EvalSuite]:
    """'mathvista,math500' or a group name ('vl', 'text'), comma-separated (or a list of such), duplicates removed,
    order kept."""
    items = names.split(",") if isinstance(names, str) else [part for name in names for part in name.split(",")]
    chosen: list[str] = []
    for item in (part.strip() for part in items):
        if not item:
            continue
        for name in SUITE_GROUPS.get(item, (item,)):
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise ValueError("no evaluation suite chosen (--suites is empty); valid: " + ", ".join(SUITES))
    return [get_suite(name) for name in chosen]
