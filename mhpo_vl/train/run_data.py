"""A training run's datasets, loaded and checked whole before the sampler starts.

Every row is read (a bad row, an empty gold answer: DataError naming file/row/field) and every prompt the run can
draw is measured with the run's encoder (one over ``data.max_prompt_length`` would otherwise stop the run only when
drawn, perhaps hours in, and again on every resume). With ``data.skip_bad`` (``mhpo-vl train --skip-bad``) such rows
and prompts are dropped instead, each one listed on stderr by id.
"""
from __future__ import annotations

import sys

from mhpo_vl.collate import PromptTooLongError
from mhpo_vl.config import DataConfig, DatasetSpec
from mhpo_vl.images import DataError
from mhpo_vl.train.interfaces import PromptMeasurer
from mhpo_vl.types import Sample

LISTED = 20  # too-long prompts named in the error; all of them are listed when skipped


def load_run_datasets(data: DataConfig, encoder: PromptMeasurer) -> tuple[list[Sample], list[Sample]]:
    """(train samples, val samples) of ``data``, each prompt checked against the encoder's length limit."""
    from mhpo_vl.datasets import import_plugins

    import_plugins(data.plugins)  # user adapters register their names before the datasets are loaded
    train = load_spec(data.train, "data.train", skip_bad=data.skip_bad)
    val = load_spec(data.val, "data.val", skip_bad=data.skip_bad)
    return (check_prompt_lengths(encoder, train, "data.train", skip_bad=data.skip_bad),
            check_prompt_lengths(encoder, val, "data.val", skip_bad=data.skip_bad))


def load_spec(spec: DatasetSpec, key: str, *, skip_bad: bool) -> list[Sample]:
    from mhpo_vl.datasets import load_dataset

    samples = list(load_dataset(spec.name, spec.source, spec.split, skip_bad=skip_bad, **spec.options))
    if spec.limit is not None:
        samples = samples[: spec.limit]
    if not samples:
        raise DataError(f"{key}: dataset {spec.name} (split {spec.split}) has no rows", file=spec.source)
    return samples


def check_prompt_lengths(encoder: PromptMeasurer, samples: list[Sample], key: str, *, skip_bad: bool) -> list[Sample]:
    """``samples`` whose prompts fit ``encoder.max_prompt_length``. Without ``skip_bad`` any prompt over it is a
    PromptTooLongError naming the first (id, length, limit) and how many more; with it they are dropped and listed."""
    limit = encoder.max_prompt_length
    measured = _measure(encoder, samples, key, skip_bad=skip_bad)
    too_long = [(sample, length) for sample, length in measured if length > limit]
    if too_long and not skip_bad:
        first, length = too_long[0]
        others = ", ".join(f"{s.id} ({n})" for s, n in too_long[1:LISTED]) + (", ..." if len(too_long) > LISTED else "")
        more = f"; {len(too_long) - 1} more of {len(samples)} {key} prompts are over it too: {others}" if others else ""
        raise PromptTooLongError(first, length, limit, more=f" ({key}){more}",
                                 remedy="raise data.max_prompt_length, lower data.max_pixels, or skip such prompts "
                                        "with data.skip_bad=true (mhpo-vl train --skip-bad)")
    if too_long:
        print(f"[mhpo-vl data] {key}: skipped {len(too_long)} of {len(samples)} prompt(s) over "
              f"max_prompt_length={limit} (data.skip_bad):", file=sys.stderr)
        for sample, length in too_long:
            print(f"  - {sample.source}/{sample.id}: {length} tokens", file=sys.stderr)
    kept = [sample for sample, length in measured if length <= limit]
    if not kept:
        raise DataError(f"{key}: every sample was skipped (data.skip_bad); nothing left to use")
    return kept


def _measure(encoder: PromptMeasurer, samples: list[Sample], key: str, *, skip_bad: bool) -> list[tuple[Sample, int]]:
    """(sample, prompt length) of each sample; one the encoder cannot take (an image it refuses) is a bad row:
    raised, or with ``skip_bad`` left out and listed."""
    measured = []
    for sample in samples:
        try:
            measured.append((sample, encoder.prompt_length(sample)))
        except DataError as exc:
            if not skip_bad:
                raise
            print(f"[mhpo-vl data] {key}: skipped {sample.source}/{sample.id} (data.skip_bad): {exc}", file=sys.stderr)
    return measured
