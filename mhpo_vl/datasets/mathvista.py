"""MathVista (Lu et al., 2024): ``testmini.json`` from the GitHub release (a dict keyed by pid, image paths relative
to the file) or the Hugging Face ``AI4Math/MathVista`` columns (``decoded_image``). Evaluation only: its licence
prohibits training on it.

Multiple-choice answers are the choice text, as MathVista stores them; the letter goes to ``metadata["answer_letter"]``.
A row whose image file is missing is an error. ``require_images=False`` keeps such rows text-only (for looking at
the questions when only some images are on disk): each kept row records ``metadata["image_missing"]`` and the count
is reported on stderr, so nothing changes silently.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mhpo_vl.datasets.base import (
    LETTERS,
    DatasetAdapter,
    Record,
    get_field,
    image_root,
    is_table_source,
    read_json,
    read_jsonl,
    read_table,
    register_dataset,
    require_source_exists,
    string_list,
    text_field,
)
from mhpo_vl.images import DataError, find_image_file, image_from_field
from mhpo_vl.types import Sample

# MathVista's answer_type values map one to one onto ours; question_type "multi_choice" overrides them.
FREE_FORM_TYPES = ("integer", "float", "list", "text")


@register_dataset("mathvista")
@dataclass
class MathVista(DatasetAdapter):
    hub_name = "AI4Math/MathVista"
    require_images: bool = True

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        self._missing = 0
        if source is None or is_table_source(source):
            yield from read_table(source, split=split or "testmini", hub_name=self.hub_name)
        else:
            path = require_source_exists(source)
            if path.is_dir():
                path = path / "testmini.json"
            rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path, key_field="pid")
            for record in rows:
                row_split = ((record.fields or {}).get("metadata") or {}).get("split")
                if split is None or record.fields is None or row_split in (None, split):
                    yield record
        if self._missing:
            self.notice(f"kept {self._missing} row(s) text-only because their image file is missing "
                        "(require_images=False); see metadata.image_missing")

    def to_sample(self, record: Record) -> Sample:
        pid = text_field(record, "pid")
        question = text_field(record, "question")
        answer = text_field(record, "answer").strip()
        question_type = text_field(record, "question_type")
        raw_choices = get_field(record, "choices", required=False)
        choices = string_list(raw_choices, record, "choices") if raw_choices is not None else None
        row_metadata = get_field(record, "metadata", required=False, default={}) or {}
        metadata = {k: v for k, v in row_metadata.items()}
        metadata["question_type"] = question_type
        if record.parsed_fields.get("query"):
            metadata["query"] = record.parsed_fields["query"]

        if question_type == "multi_choice":
            if not choices:
                raise DataError("multi_choice row without choices", file=record.file, row=record.row, field="choices")
            if answer not in choices:
                raise DataError(f"answer {answer!r} is not one of the choices {choices}", file=record.file, row=record.row, field="answer")
            answer_type = "multiple_choice"
            metadata["answer_letter"] = LETTERS[choices.index(answer)]
        elif question_type == "free_form":
            answer_type = text_field(record, "answer_type")
            if answer_type not in FREE_FORM_TYPES:
                raise DataError(f"unknown answer type {answer_type!r}; MathVista free_form rows use {', '.join(FREE_FORM_TYPES)}",
                                file=record.file, row=record.row, field="answer_type")
            choices = None
        else:
            raise DataError(f"unknown question_type {question_type!r} (expected multi_choice or free_form)",
                            file=record.file, row=record.row, field="question_type")

        precision = get_field(record, "precision", required=False)
        return Sample(
            id=pid,
            source="mathvista",
            split=row_metadata.get("split") or record.split or "testmini",
            question=question,
            images=self._images(record, metadata),
            answer=answer,
            answer_type=answer_type,
            choices=choices,
            precision=int(precision) if precision is not None else None,
            unit=(text_field(record, "unit", required=False) or None),
            metadata=metadata,
        )

    def _images(self, record: Record, metadata: dict) -> list:
        decoded = (record.fields or {}).get("decoded_image")
        if decoded is not None:  # the HF copy carries the image itself
            return [image_from_field(decoded, record.root, file=record.file, row=record.row, field="decoded_image")]
        relative = text_field(record, "image")
        root = image_root(record, relative, "image")
        path, note = find_image_file(root, relative, file=record.file, row=record.row, field="image", other_suffixes=True)
        if path is None:
            if self.require_images:
                raise DataError(f"image file not found: {root / relative} "
                                "(pass require_images=False to keep such rows text-only, or skip_bad to skip them)",
                                file=record.file, row=record.row, field="image")
            self._missing += 1
            metadata["image_missing"] = relative
            return []
        if note:
            metadata["image_substituted"] = note
        return [image_from_field(str(path.relative_to(root.resolve())), root,
                                 file=record.file, row=record.row, field="image")]
