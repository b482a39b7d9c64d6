"""The no-code adapter: a YAML (or JSON) file maps a dataset's columns onto the canonical Sample.

    load_dataset("my_shapes.yaml")            # or load_dataset("columns", source="my_shapes.yaml")
    mhpo-vl data show my_shapes.yaml

Mapping file keys (see docs/datasets.md for a worked example):
    data           the data, relative to the mapping file: .jsonl, .json, .parquet, .arrow, a folder written by
                   ``datasets.save_to_disk``, or ``hf:owner/name`` for a Hugging Face dataset           (required)
    columns        role -> column name; roles: question, answer (required), images, choices, id,
                   answer_type, precision, unit                                                          (required)
    split          the split label of the samples, and the split loaded for hf:/folder sources   (default "train")
    source_name    Sample.source                                                    (default: the mapping file's stem)
    image_root     folder that image paths are relative to, relative to the mapping file (default: the data's folder)
    answer_type    one answer type for every row, when there is no answer_type column   (default: inferred per row)
    answer_is_letter  the answer column holds the choice letter (A, B, ...) rather than the choice text (default false)
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhpo_vl.datasets.base import (
    LETTERS,
    DatasetAdapter,
    Record,
    check_answer_type,
    get_field,
    image_list,
    infer_answer_type,
    is_table_source,
    letter_to_choice,
    read_json,
    read_jsonl,
    read_table,
    register_dataset,
    string_list,
    text_field,
)
from mhpo_vl.images import DataError, image_from_field
from mhpo_vl.types import ANSWER_TYPES, Sample

TOP_LEVEL_KEYS = ("data", "columns", "split", "source_name", "image_root", "answer_type", "answer_is_letter")
ROLES = ("question", "answer", "images", "choices", "id", "answer_type", "precision", "unit")
REQUIRED_ROLES = ("question", "answer")


@dataclass
class ColumnMapping:
    mapping_file: Path
    data: str
    columns: dict[str, str]
    split: str = "train"
    source_name: str = ""
    image_root: Path | None = None
    answer_type: str | None = None
    answer_is_letter: bool = False

    @classmethod
    def read(cls, path: str | Path) -> ColumnMapping:
        path = Path(path)
        if not path.is_file():
            raise DataError("column-mapping file not found", file=path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                spec = json.loads(text)
            else:
                import yaml

                spec = yaml.safe_load(text)
        except Exception as exc:  # yaml.YAMLError / JSONDecodeError: report which file could not be parsed
            raise DataError(f"cannot parse mapping: {exc}", file=path) from exc
        if not isinstance(spec, dict):
            raise DataError("a column mapping must be a mapping of keys", file=path)
        unknown = sorted(set(spec) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise DataError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TOP_LEVEL_KEYS)}", file=path, field=unknown[0])
        for key in ("data", "columns"):
            if key not in spec:
                raise DataError("required key missing", file=path, field=key)
        columns = spec["columns"]
        if not isinstance(columns, dict):
            raise DataError("must map roles to column names", file=path, field="columns")
        columns = {role: name for role, name in columns.items() if name is not None}
        bad_roles = sorted(set(columns) - set(ROLES))
        if bad_roles:
            raise DataError(f"unknown role(s) {', '.join(bad_roles)}; valid roles: {', '.join(ROLES)}", file=path, field="columns")
        for role in REQUIRED_ROLES:
            if role not in columns:
                raise DataError(f"the {role!r} role must name a column", file=path, field="columns")
        answer_type = spec.get("answer_type")
        if answer_type is not None and answer_type not in ANSWER_TYPES:
            raise DataError(f"unknown answer type {answer_type!r}; valid: {', '.join(ANSWER_TYPES)}", file=path, field="answer_type")
        image_root = spec.get("image_root")
        return cls(
            mapping_file=path,
            data=str(spec["data"]),
            columns={role: str(name) for role, name in columns.items()},
            split=str(spec.get("split", "train")),
            source_name=str(spec.get("source_name") or path.stem),
            image_root=(path.parent / image_root).resolve() if image_root is not None else None,
            answer_type=answer_type,
            answer_is_letter=bool(spec.get("answer_is_letter", False)),
        )

    def data_location(self) -> str:
        return self.data if self.data.startswith("hf:") else str((self.mapping_file.parent / self.data).resolve())


@register_dataset("columns")
@dataclass
class Columns(DatasetAdapter):
    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if source is None:
            raise ValueError("the 'columns' dataset needs source=<mapping .yaml/.json file>")
        self.mapping = mapping = ColumnMapping.read(source)
        self.split_label = split or mapping.split
        location = mapping.data_location()
        if is_table_source(location):
            rows = read_table(location, split=self.split_label)
        else:
            path = Path(location)
            if not path.is_file():
                raise DataError(f"data file not found: {path}", file=mapping.mapping_file, field="data")
            if path.suffix == ".jsonl":
                rows = read_jsonl(path)
            elif path.suffix == ".json":
                rows = read_json(path)
            else:
                raise DataError(f"unsupported data file type {path.suffix!r} (use .jsonl, .json, .parquet, .arrow)",
                                file=mapping.mapping_file, field="data")
        for record in rows:
            if mapping.image_root is not None:
                record.root = mapping.image_root
            yield record

    def to_sample(self, record: Record) -> Sample:
        mapping, cols = self.mapping, self.mapping.columns
        question = text_field(record, cols["question"])
        answer = text_field(record, cols["answer"]).strip()
        if not answer:  # named by its column here; DatasetAdapter.load would only know the canonical "answer"
            raise DataError("empty gold answer", file=record.file, row=record.row, field=cols["answer"])
        choices = None
        metadata: dict[str, Any] = {}
        if "choices" in cols:
            raw = get_field(record, cols["choices"], required=False)
            choices = string_list(raw, record, cols["choices"]) if raw is not None else None
        if choices:
            if mapping.answer_is_letter:
                metadata["answer_letter"] = answer.strip("()").strip().upper()
                answer = letter_to_choice(answer, choices, record, field=cols["answer"])
            elif answer in choices:
                metadata["answer_letter"] = LETTERS[choices.index(answer)]
            else:
                raise DataError(f"answer {answer!r} is not one of the choices {choices} (set answer_is_letter: true if "
                                "the column holds letters)", file=record.file, row=record.row, field=cols["answer"])
        if "answer_type" in cols:
            answer_type = check_answer_type(text_field(record, cols["answer_type"]), record, cols["answer_type"])
        else:
            answer_type = mapping.answer_type or infer_answer_type(answer, choices)
        images = []
        if "images" in cols:
            images = [image_from_field(v, record.root, file=record.file, row=record.row, field=cols["images"])
                      for v in image_list(get_field(record, cols["images"]))]
        precision = get_field(record, cols["precision"], required=False) if "precision" in cols else None
        return Sample(
            id=text_field(record, cols["id"]) if "id" in cols else str(record.row),
            source=mapping.source_name,
            split=self.split_label,
            question=question,
            images=images,
            answer=answer,
            answer_type=answer_type,
            choices=choices,
            precision=int(precision) if precision is not None else None,
            unit=(text_field(record, cols["unit"], required=False) or None) if "unit" in cols else None,
            metadata=metadata,
        )
