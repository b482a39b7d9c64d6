"""Text-only math sets: MATH-500, AIME 2024, AIME 2025, AMC 2023, HMMT February 2025.

Local copies are JSONL with ``problem`` and ``answer`` (as in hiyouga/MathRuler's data/ and the Simple-OPD copies);
a folder source means the usual file name inside it. Without a source, the Hugging Face copy named below is used.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mhpo_vl.datasets.base import (
    DatasetAdapter,
    Record,
    infer_answer_type,
    is_table_source,
    read_jsonl,
    read_table,
    register_dataset,
    require_source_exists,
    text_field,
)
from mhpo_vl.images import DataError
from mhpo_vl.types import Sample


class TextMathAdapter(DatasetAdapter):
    default_file: str = ""
    hub_split: str = "test"
    id_fields: tuple[str, ...] = ("id",)
    metadata_fields: tuple[str, ...] = ()

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if source is None or is_table_source(source):
            yield from read_table(source, split=split or self.hub_split, hub_name=self.hub_name)
            return
        path = require_source_exists(source)
        if path.is_dir():
            path = path / self.default_file
        yield from read_jsonl(path, split=split or "test")

    def to_sample(self, record: Record) -> Sample:
        fields = record.parsed_fields
        question_field = "problem" if "problem" in fields else "question" if "question" in fields else "problem"
        question = text_field(record, question_field)
        answer = text_field(record, "answer").strip()
        if not answer:
            raise DataError("empty answer", file=record.file, row=record.row, field="answer")
        sample_id = next((str(fields[f]) for f in self.id_fields if fields.get(f) is not None), str(record.row))
        return Sample(
            id=sample_id,
            source=self.name,
            split=record.split or "test",
            question=question,
            answer=answer,
            answer_type=infer_answer_type(answer),
            metadata={f: fields[f] for f in self.metadata_fields if fields.get(f) is not None},
        )


@register_dataset("math500")
@dataclass
class Math500(TextMathAdapter):
    hub_name = "HuggingFaceH4/MATH-500"
    default_file = "math500_test.jsonl"
    id_fields = ("unique_id",)
    metadata_fields = ("subject", "level", "solution")


@register_dataset("aime24")
@dataclass
class Aime24(TextMathAdapter):
    hub_name = "HuggingFaceH4/aime_2024"
    hub_split = "train"
    default_file = "aime_2024.jsonl"
    metadata_fields = ("year", "url", "solution")


@register_dataset("aime25")
@dataclass
class Aime25(TextMathAdapter):
    hub_name = "math-ai/aime25"
    default_file = "aime_2025.jsonl"


@register_dataset("amc23")
@dataclass
class Amc23(TextMathAdapter):
    hub_name = "zwhe99/amc23"
    default_file = "amc23_test.jsonl"


@register_dataset("hmmt25")
@dataclass
class Hmmt25(TextMathAdapter):
    hub_name = "MathArena/hmmt_feb_2025"
    hub_split = "train"
    default_file = "hmmt25_test.jsonl"
    id_fields = ("problem_idx", "id")
