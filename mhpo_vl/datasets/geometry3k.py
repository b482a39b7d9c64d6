"""Geometry3K (Lu et al., InterGPS, 2021): 3,002 geometry problems with diagrams and four choices.

Reads three layouts of the same data:
- the Hugging Face dataset ``hiyouga/geometry3k`` by name, or a local copy of it (parquet / arrow / a folder saved by
  ``datasets``, or JSONL rows ``{"images": [...], "problem": "<image>...", "answer": <choice text>, ...}``);
- the original InterGPS folders ``<id>/data.json`` + ``<id>/img_diagram.png`` (optionally under ``train/ val/ test/``).
The answer is the CHOICE TEXT (as the HF copy stores it); the letter is kept in ``metadata["answer_letter"]``.
Splits follow the problem id: train 0-2100, val 2101-2400, test 2401-3001.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mhpo_vl.datasets.base import (
    LETTERS,
    DatasetAdapter,
    Record,
    get_field,
    image_list,
    infer_answer_type,
    is_table_source,
    letter_to_choice,
    read_json,
    read_jsonl,
    read_table,
    register_dataset,
    require_source_exists,
    string_list,
    text_field,
)
from mhpo_vl.images import DataError, image_from_field
from mhpo_vl.types import Sample

SPLIT_IDS = {"train": range(0, 2101), "val": range(2101, 2401), "test": range(2401, 3002)}
HUB_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
IMAGE_PLACEHOLDER = "<image>"


def canonical_split(split: str) -> str:
    return "val" if split == "validation" else split


def split_of_id(problem_id: int) -> str:
    for name, ids in SPLIT_IDS.items():
        if problem_id in ids:
            return name
    raise ValueError(f"Geometry3K id {problem_id} is outside 0-3001")


@register_dataset("geometry3k")
@dataclass
class Geometry3K(DatasetAdapter):
    hub_name = "hiyouga/geometry3k"

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        if split is not None and split not in HUB_SPLITS:
            raise ValueError(f"geometry3k split must be one of train, val, test; got {split!r}")
        if source is None or is_table_source(source):
            yield from read_table(source, split=HUB_SPLITS[split] if split else None, hub_name=self.hub_name)
            return
        path = require_source_exists(source)
        if path.is_file():
            records = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
        else:
            records = self._intergps_records(path, split)
        for record in records:
            if record.fields is not None and split is not None and not self._in_split(record, split):
                continue
            yield record

    def _intergps_records(self, root: Path, split: str | None) -> Iterator[Record]:
        split_dirs = [root / name for name in ("train", "val", "test") if (root / name).is_dir()]
        if split_dirs:  # the InterGPS release: data/geometry3k/{train,val,test}/<id>/
            folders = [root / canonical_split(split)] if split else split_dirs
        else:
            folders = [root]
        problem_dirs = sorted(
            (d for folder in folders for d in folder.iterdir() if (d / "data.json").is_file()),
            key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
        )
        if not problem_dirs:
            raise DataError("no InterGPS problem folders (<id>/data.json) found", file=root)
        for problem_dir in problem_dirs:
            data_file = problem_dir / "data.json"
            (record,) = list(read_json_object(data_file))
            if record.fields is not None:  # else a bad data.json: load() raises (or skips) its record.error
                record.fields["_layout"] = "intergps"
            yield record

    @staticmethod
    def _in_split(record: Record, split: str) -> bool:
        problem_id = (record.fields or {}).get("id")
        if problem_id is None:
            return True  # no id to place it by; the hub split already chose it
        return int(problem_id) in SPLIT_IDS[canonical_split(split)]

    def to_sample(self, record: Record) -> Sample:
        if (record.fields or {}).get("_layout") == "intergps":
            return self._from_intergps(record)
        return self._from_hf_row(record)

    def _from_intergps(self, record: Record) -> Sample:
        problem_id = int(get_field(record, "id"))
        choices = string_list(get_field(record, "choices"), record, "choices")
        letter = text_field(record, "answer")
        answer = letter_to_choice(letter, choices, record)
        image = image_from_field("img_diagram.png", record.root, file=record.file, row=record.row, field="img_diagram.png")
        fields = record.parsed_fields
        return Sample(
            id=str(problem_id),
            source="geometry3k",
            split=split_of_id(problem_id),
            question=text_field(record, "annotat_text").strip(),
            images=[image],
            answer=answer,
            answer_type="multiple_choice",
            choices=choices,
            unit=fields.get("unit") or None,
            metadata={
                "answer_letter": letter.strip().upper(),
                "problem_type_graph": fields.get("problem_type_graph"),
                "problem_type_goal": fields.get("problem_type_goal"),
                "layout": "intergps",
            },
        )

    def _from_hf_row(self, record: Record) -> Sample:
        problem = text_field(record, "problem")
        answer = text_field(record, "answer").strip()
        images = [
            image_from_field(value, record.root, file=record.file, row=record.row, field="images")
            for value in image_list(get_field(record, "images"))
        ]
        placeholders = problem.count(IMAGE_PLACEHOLDER)
        if placeholders and placeholders != len(images):
            raise DataError(f"problem has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the row has {len(images)} image(s)",
                            file=record.file, row=record.row, field="problem")
        raw_choices = get_field(record, "choices", required=False)
        choices = string_list(raw_choices, record, "choices") if raw_choices is not None else None
        metadata: dict = {"layout": "hf"}
        if choices:
            if answer not in choices:
                raise DataError(f"answer {answer!r} is not one of the choices {choices}", file=record.file, row=record.row, field="answer")
            letter = LETTERS[choices.index(answer)]
            ground_truth = text_field(record, "ground_truth", required=False)
            if ground_truth is not None and ground_truth.strip().upper() != letter:
                raise DataError(f"ground_truth {ground_truth!r} disagrees with answer {answer!r} (choice {letter})",
                                file=record.file, row=record.row, field="ground_truth")
            metadata["answer_letter"] = letter
        raw_id = get_field(record, "id", required=False)
        if raw_id is not None:
            problem_id, split = str(raw_id), split_of_id(int(raw_id))
        else:
            split = canonical_split(record.split or "train")
            problem_id = f"{split}-{record.row}"
        return Sample(
            id=problem_id,
            source="geometry3k",
            split=split,
            # The HF copy marks where the diagram goes with "<image>"; our chat messages carry image slots instead.
            question=problem.replace(IMAGE_PLACEHOLDER, "").strip(),
            images=images,
            answer=answer,
            answer_type=infer_answer_type(answer, choices),
            choices=choices,
            metadata=metadata,
        )


def read_json_object(path: Path) -> Iterator[Record]:
    """One JSON object file (an InterGPS data.json) as a single Record located at that file."""
    import json

    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        yield Record(None, str(path), None, path.parent, None, DataError(f"invalid JSON: {exc}", file=path))
        return
    if not isinstance(fields, dict):
        yield Record(None, str(path), None, path.parent, None, DataError("expected a JSON object", file=path))
        return
    yield Record(fields, str(path), None, path.parent, None)
