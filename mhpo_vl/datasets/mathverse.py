"""MathVerse (Zhang et al., 2024): ``testmini.json`` (every problem in five versions: Text Dominant, Text Lite,
Vision Intensive, Vision Dominant, Vision Only; image paths relative to the file) and ``testmini_text_only.json``
(the Text Only version, no image), as in the ZrrSkywalker/MathVerse repository, or the Hugging Face
``AI4Math/MathVerse`` configs ``testmini`` / ``testmini_text_only``.

Multiple-choice options live inside the question text ("Choices:\\nA:40°\\nB:60°..."). When they can be read back
unambiguously and the answer is one letter among them, ``choices`` holds them, ``answer`` is the choice text and the
letter goes to ``metadata["answer_letter"]``; ``metadata["choices_in_question"]`` tells templates not to list them
twice. Anything else (two-letter answers such as "C\\nD", unparseable options) keeps the source answer, typed text.
The official prompts are kept as ``metadata["query_cot"]`` / ``["query_wo"]``.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from mhpo_vl.datasets.base import (
    LETTERS,
    DatasetAdapter,
    Record,
    get_field,
    image_root,
    infer_answer_type,
    is_table_source,
    read_json,
    read_table,
    register_dataset,
    require_source_exists,
    text_field,
)
from mhpo_vl.images import DataError, find_image_file, image_from_field
from mhpo_vl.types import Sample

VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only", "Text Only")
_CHOICES_HEADER = re.compile(r"\n\s*Choices?\s*:\s*\n", re.IGNORECASE)
_CHOICE_LINE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.：]\s*(.*?)\s*$")


def parse_choices(question: str) -> list[str] | None:
    """The options listed after the last "Choices:" line, if every following line is "X: text" with letters A, B, C..."""
    parts = _CHOICES_HEADER.split(question)
    if len(parts) < 2:
        return None
    lines = [line for line in parts[-1].split("\n") if line.strip()]
    choices = []
    for index, line in enumerate(lines):
        match = _CHOICE_LINE.match(line)
        if not match or match.group(1) != LETTERS[index]:
            return None
        choices.append(match.group(2))
    return choices if len(choices) >= 2 else None


@register_dataset("mathverse")
@dataclass
class MathVerse(DatasetAdapter):
    hub_name = "AI4Math/MathVerse"
    require_images: bool = True
    problem_version: str | None = None  # keep only this version, e.g. "Vision Only"

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if self.problem_version is not None and self.problem_version not in VERSIONS:
            raise ValueError(f"problem_version must be one of {', '.join(VERSIONS)}; got {self.problem_version!r}")
        self._missing = 0
        if source is None or is_table_source(source):
            rows = read_table(source, split="testmini", hub_name=self.hub_name, hub_config=split or "testmini")
        else:
            path = require_source_exists(source)
            if path.is_dir():
                path = path / f"{split or 'testmini'}.json"
            rows = read_json(path)
        for record in rows:
            if self.problem_version is None or record.fields is None or record.fields.get("problem_version") == self.problem_version:
                yield record
        if self._missing:
            self.notice(f"kept {self._missing} row(s) without their image because the file is missing "
                        "(require_images=False); see metadata.image_missing")

    def to_sample(self, record: Record) -> Sample:
        question = text_field(record, "question")
        answer = text_field(record, "answer").strip()
        version = text_field(record, "problem_version")
        if version not in VERSIONS:
            raise DataError(f"unknown problem_version {version!r}; valid: {', '.join(VERSIONS)}",
                            file=record.file, row=record.row, field="problem_version")
        question_type = text_field(record, "question_type")
        if question_type not in ("multi-choice", "free-form"):
            raise DataError(f"unknown question_type {question_type!r} (expected multi-choice or free-form)",
                            file=record.file, row=record.row, field="question_type")
        row_metadata = get_field(record, "metadata", required=False, default={}) or {}
        metadata = dict(row_metadata)
        metadata.update(problem_version=version, question_type=question_type,
                        problem_index=text_field(record, "problem_index", required=False))
        for key in ("query_cot", "query_wo"):
            if record.parsed_fields.get(key):
                metadata[key] = record.parsed_fields[key]

        choices, answer_type = None, infer_answer_type(answer)
        if question_type == "multi-choice":
            answer_type = "text"
            parsed = parse_choices(question)
            letter = answer.strip("()").strip()
            if parsed and len(letter) == 1 and letter in LETTERS[: len(parsed)]:
                choices, answer, answer_type = parsed, parsed[LETTERS.index(letter)], "multiple_choice"
                metadata.update(answer_letter=letter, choices_in_question=True)
            elif parsed and answer in parsed:
                choices, answer_type = parsed, "multiple_choice"
                metadata.update(answer_letter=LETTERS[parsed.index(answer)], choices_in_question=True)
        return Sample(
            id=text_field(record, "sample_index"),
            source="mathverse",
            split=row_metadata.get("split") or "testmini",
            question=question,
            images=self._images(record, version, metadata),
            answer=answer,
            answer_type=answer_type,
            choices=choices,
            metadata=metadata,
        )

    def _images(self, record: Record, version: str, metadata: dict) -> list:
        value = record.parsed_fields.get("image")
        if value is None or (isinstance(value, str) and not value.strip()):
            if version == "Text Only":
                return []
            raise DataError(f"a {version!r} row must have an image", file=record.file, row=record.row, field="image")
        if not isinstance(value, str):  # the HF copy: a decoded image
            return [image_from_field(value, record.root, file=record.file, row=record.row, field="image")]
        root = image_root(record, value, "image")
        path, _ = find_image_file(root, value, file=record.file, row=record.row, field="image")
        if path is None:
            if self.require_images:
                raise DataError(f"image file not found: {root / value} "
                                "(pass require_images=False to keep such rows without images, or skip_bad to skip them)",
                                file=record.file, row=record.row, field="image")
            self._missing += 1
            metadata["image_missing"] = value
            return []
        return [image_from_field(value, record.root, file=record.file, row=record.row, field="image")]
