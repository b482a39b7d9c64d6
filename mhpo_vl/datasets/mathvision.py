"""MATH-Vision (Wang et al., 2024): ``testmini.jsonl`` / ``test.jsonl`` with an ``images/`` folder, as in the
mathllm/MATH-V repository, or the Hugging Face ``MathLLMs/MathVision`` columns (``decoded_image``).

Options are empty (free-form) or five items; in 73 testmini rows the options are literally A-E because the choices are
drawn in the image. The source answer is a letter for multiple-choice rows: ``answer`` becomes the choice text (equal
to the letter when the choices are in the image) and the letter goes to ``metadata["answer_letter"]``.
Questions keep their ``<image1>`` placeholders, as the official prompt does.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mhpo_vl.datasets.base import (
    LETTERS,
    DatasetAdapter,
    Record,
    get_field,
    image_list,
    infer_answer_type,
    is_table_source,
    letter_to_choice,
    read_jsonl,
    read_table,
    register_dataset,
    require_source_exists,
    string_list,
    text_field,
)
from mhpo_vl.images import DataError, image_from_field
from mhpo_vl.types import Sample


@register_dataset("mathvision")
@dataclass
class MathVision(DatasetAdapter):
    hub_name = "MathLLMs/MathVision"

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if source is None or is_table_source(source):
            yield from read_table(source, split=split or "testmini", hub_name=self.hub_name)
            return
        path = require_source_exists(source)
        if path.is_dir():
            path = path / f"{split or 'testmini'}.jsonl"
        yield from read_jsonl(path, split=split or path.stem)

    def to_sample(self, record: Record) -> Sample:
        answer = text_field(record, "answer").strip()
        choices = string_list(get_field(record, "options", required=False, default=[]), record, "options") or None
        fields = record.parsed_fields
        metadata = {key: fields.get(key) for key in ("level", "subject") if fields.get(key) is not None}
        if fields.get("solution"):
            metadata["solution"] = fields["solution"]
        if choices:
            letter = answer.strip("()").strip().upper()
            answer = letter_to_choice(letter, choices, record)
            metadata["answer_letter"] = letter
            metadata["options_in_image"] = choices == list(LETTERS[: len(choices)])
        return Sample(
            id=text_field(record, "id"),
            source="mathvision",
            split=record.split or "testmini",
            question=text_field(record, "question"),
            images=self._images(record),
            answer=answer,
            answer_type=infer_answer_type(answer, choices),
            choices=choices,
            metadata=metadata,
        )

    @staticmethod
    def _images(record: Record) -> list:
        decoded = record.parsed_fields.get("decoded_image")
        if decoded is not None:
            return [image_from_field(decoded, record.root, file=record.file, row=record.row, field="decoded_image")]
        values = image_list(get_field(record, "image"))
        if not values:
            raise DataError("row has no image", file=record.file, row=record.row, field="image")
        return [image_from_field(v, record.root, file=record.file, row=record.row, field="image") for v in values]
