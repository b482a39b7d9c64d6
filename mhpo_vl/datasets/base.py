"""The adapter registry, the row loop with skip-bad bookkeeping, and the file readers adapters share.

An adapter turns the rows of one dataset format into canonical :class:`~mhpo_vl.types.Sample` records. It is a small
dataclass whose fields are its options (so ``load_dataset(name, ..., option=value)`` is checked against them) with two
methods: ``records(source, split)`` yields raw rows with their location, ``to_sample(record)`` converts one row.
The loop in :meth:`DatasetAdapter.load` owns error handling, so every adapter gets the same skip-bad behaviour:
a bad row raises :class:`DataError` naming file/row/field, unless the caller asked to skip, in which case every
skipped row is counted, listed on stderr and kept on the returned list's ``.skipped``.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from mhpo_vl.images import DataError
from mhpo_vl.types import ANSWER_TYPES, Sample

# name -> adapter class. Filled by @register_dataset in the adapter modules (and by user modules).
DATASETS: dict[str, type[DatasetAdapter]] = {}


def register_dataset(name: str) -> Callable:
    """Register an adapter under ``name``.

    Decorate either a ``DatasetAdapter`` subclass, or a plain function ``fn(source, split, **options) ->
    Iterable[Sample]`` (simplest, but a bad row then stops the load: use a class to get per-row skip-bad).
    """

    def decorate(obj):
        if name in DATASETS and DATASETS[name] is not obj:
            raise ValueError(f"dataset name {name!r} is already registered to {DATASETS[name].__qualname__}")
        adapter = obj if isinstance(obj, type) and issubclass(obj, DatasetAdapter) else _function_adapter(name, obj)
        adapter.name = name
        DATASETS[name] = adapter
        return obj

    return decorate


@dataclass
class Record:
    """One raw row and where it came from. ``root`` is the folder its relative image paths are resolved against."""

    fields: dict[str, Any] | None
    file: str
    row: Any
    root: Path | None = None
    split: str | None = None
    error: DataError | None = None  # a row that could not even be parsed (bad JSON line)

    @property
    def parsed_fields(self) -> dict[str, Any]:
        """``fields`` of a row that parsed. :meth:`DatasetAdapter.load` raises a row's ``error`` before calling
        ``to_sample``, so there this is always the row's fields; a row without fields raises its error here."""
        if self.fields is None:
            raise self.error or DataError("row has no fields", file=self.file, row=self.row)
        return self.fields


@dataclass
class SkippedRow:
    file: str | None
    row: Any
    field: str | None
    reason: str

    def __str__(self) -> str:
        return DataError(self.reason, file=self.file, row=self.row, field=self.field).describe()


class LoadedSamples(list):
    """A plain ``list[Sample]`` that also carries what was skipped (empty unless ``skip_bad=True``) and notices
    about rows kept with a caveat (for example text-only because their image is missing)."""

    def __init__(self, samples: Iterable[Sample] = (), skipped: list[SkippedRow] | None = None, notices: list[str] | None = None):
        super().__init__(samples)
        self.skipped: list[SkippedRow] = skipped or []
        self.notices: list[str] = notices or []


class DatasetAdapter:
    """Base class for adapters. Subclasses are dataclasses; their fields are the dataset's options."""

    name: str = "?"
    hub_name: str | None = None  # Hugging Face dataset loaded when no source is given

    def records(self, source: str | None, split: str | None) -> Iterator[Record]:
        raise NotImplementedError

    def to_sample(self, record: Record) -> Sample:
        raise NotImplementedError

    def notice(self, message: str) -> None:
        """A caveat about the loaded data that must reach the user (printed to stderr, kept on ``.notices``)."""
        self.__dict__.setdefault("_notices", []).append(message)

    def load(self, source: str | None, split: str | None, *, skip_bad: bool = False) -> LoadedSamples:
        samples = LoadedSamples()
        for record in self.records(source, split):
            try:
                if record.error is not None:
                    raise record.error
                sample = self.to_sample(record)
                if sample is not None:
                    check_gold_answer(sample, record)
            except DataError as exc:
                if not skip_bad:
                    raise
                samples.skipped.append(SkippedRow(exc.file or record.file, exc.row if exc.row is not None else record.row, exc.field, exc.reason))
                continue
            if sample is not None:
                samples.append(sample)
        samples.notices.extend(getattr(self, "_notices", []))
        return samples


def check_gold_answer(sample: Sample, record: Record) -> None:
    """An empty gold answer would leave RL with the format reward alone (nothing can be graded right): bad row."""
    if not isinstance(sample.answer, str) or not sample.answer.strip():
        raise DataError(f"empty gold answer ({sample.answer!r}) for sample {sample.id!r}; every problem needs one",
                        file=record.file, row=record.row, field="answer")


def load_dataset(
    name: str, source: str | None = None, split: str | None = None, *, skip_bad: bool = False, **options: Any
) -> LoadedSamples:
    """Load a dataset as canonical Samples.

    ``name``: a registered adapter (see :data:`DATASETS`) or the path of a column-mapping YAML/JSON file (the
    no-code path, same as ``load_dataset("columns", source=that_path)``).
    ``source``: a local file or folder in the dataset's original format; ``None`` loads the Hugging Face hub copy.
    ``skip_bad``: skip rows with bad data instead of raising; every skipped row is listed on stderr and kept on
    the result's ``.skipped``.
    ``options``: adapter options (the adapter's dataclass fields), e.g. ``require_images=False`` for MathVista.
    """
    if name not in DATASETS and _looks_like_mapping_file(name):
        name, source = "columns", name
    adapter_cls = adapter_for(name, options)
    adapter = adapter_cls(**options)
    samples = adapter.load(source, split, skip_bad=skip_bad)
    _report(name, source, samples)
    if not samples:
        where = source if source is not None else f"hub {adapter_cls.hub_name}"
        detail = f"; {len(samples.skipped)} row(s) were skipped as bad" if samples.skipped else ""
        raise DataError(f"dataset {name!r} gave no samples for split {split!r}{detail}", file=where)
    return samples


def adapter_for(name: str, options: dict[str, Any]) -> type[DatasetAdapter]:
    """The adapter class registered as ``name`` (or "columns" for a column-mapping file), after checking that it
    takes every option given. Cheap: run-config validation calls it before anything heavy starts."""
    if name not in DATASETS and _looks_like_mapping_file(name):
        name = "columns"
    adapter_cls = DATASETS.get(name)
    if adapter_cls is None and name.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"column-mapping file not found: {name} (relative to {Path.cwd()})")
    if adapter_cls is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))} "
                         "(or the path of a column-mapping .yaml/.json file)")
    valid: list[str] = [f.name for f in dataclasses.fields(adapter_cls)] if dataclasses.is_dataclass(adapter_cls) else []
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid options: {', '.join(valid) or 'none'}")
    return adapter_cls


def import_plugins(modules: Iterable[str]) -> None:
    """Import user adapter modules (a ``.py`` path or a dotted module name) so their ``@register_dataset`` runs."""
    import importlib
    import importlib.util

    for module in modules:
        if module.endswith(".py"):
            path = Path(module)
            if not path.is_file():
                raise ValueError(f"dataset plug-in file not found: {module}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise ValueError(f"dataset plug-in file cannot be imported: {module}")
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = loaded
            spec.loader.exec_module(loaded)
        else:
            importlib.import_module(module)


def _report(name: str, source: str | None, samples: LoadedSamples) -> None:
    """Skipped rows and caveats go to the terminal (stderr), always, also while a run sends library output to
    its log: a dataset never shrinks or changes silently."""
    from mhpo_vl.runs import console

    if samples.skipped:
        console.line(f"[mhpo-vl data] {name}: skipped {len(samples.skipped)} bad row(s) from {source}:")
        for skipped in samples.skipped:
            console.line(f"  - {skipped}")
    for notice in samples.notices:
        console.line(f"[mhpo-vl data] {name}: {notice}")


def _looks_like_mapping_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml", ".json")) and Path(name).is_file()


def _function_adapter(name: str, fn: Callable) -> type[DatasetAdapter]:
    """Wrap ``fn(source, split, **options)`` as an adapter class; keyword parameters become its options."""
    import inspect

    params = [
        p for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.default is not inspect.Parameter.empty and p.name not in ("source", "split"))
    ]
    fields = [(p.name, Any, dataclasses.field(default=p.default)) for p in params]

    class FunctionAdapter(DatasetAdapter):
        def records(self, source: str | None, split: str | None) -> Iterator[Record]:
            options = {p.name: getattr(self, p.name) for p in params}
            for index, sample in enumerate(fn(source, split, **options)):
                if not isinstance(sample, Sample):
                    raise TypeError(f"dataset {name!r}: {fn.__qualname__} yielded {type(sample).__name__}, not Sample")
                yield Record({"sample": sample}, file=str(source), row=index + 1)

        def to_sample(self, record: Record) -> Sample:
            return record.parsed_fields["sample"]

    return dataclasses.make_dataclass(f"{fn.__name__}_adapter", fields, bases=(FunctionAdapter,))


# ----------------------------------------------------------------------------------------------------------------
# Readers shared by the adapters. Each yields Records with a location a person can find (line number, key, index).


def read_jsonl(path: Path, *, split: str | None = None) -> Iterator[Record]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Record(None, str(path), line_no, path.parent, split, DataError(f"invalid JSON: {exc}", file=path, row=line_no))
                continue
            if not isinstance(fields, dict):
                yield Record(None, str(path), line_no, path.parent, split,
                             DataError(f"expected a JSON object, got {type(fields).__name__}", file=path, row=line_no))
                continue
            yield Record(fields, str(path), line_no, path.parent, split)


def read_json(path: Path, *, split: str | None = None, key_field: str | None = None) -> Iterator[Record]:
    """A JSON list of rows (row = 1-based index) or a dict keyed by id (row = the key; stored in ``key_field``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc}", file=path) from exc
    items = data.items() if isinstance(data, dict) else enumerate(data, start=1) if isinstance(data, list) else None
    if items is None:
        raise DataError(f"expected a JSON list or object of rows, got {type(data).__name__}", file=path)
    for key, fields in items:
        if not isinstance(fields, dict):
            yield Record(None, str(path), key, path.parent, split, DataError("expected a JSON object", file=path, row=key))
            continue
        if isinstance(data, dict) and key_field:
            fields = {key_field: key, **fields}
        yield Record(fields, str(path), key, path.parent, split)


def read_table(source: str | None, *, split: str | None, hub_name: str | None = None, hub_config: str | None = None) -> Iterator[Record]:
    """Rows from a Hugging Face dataset: by hub name (source None / ``hf:name``), a folder written by
    ``save_to_disk``, parquet or arrow files. Image columns arrive decoded (PIL) through ``datasets``."""
    import datasets  # heavy; only for these formats

    hub = hub_name if source is None else source[3:] if source.startswith("hf:") else None
    if hub is not None:
        table = load_hub_dataset(hub, hub_config, split)
        label = f"hf:{hub}" + (f"[{split}]" if split else "")
        root = None
    elif source is None:
        raise ValueError("no source given and the dataset has no Hugging Face copy (hub_name) to load instead")
    else:
        path = Path(source)
        root = path if path.is_dir() else path.parent
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            table = datasets.load_from_disk(str(path))
        elif path.is_dir() and list(path.rglob("*.parquet")):
            table = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in path.rglob("*.parquet")), split="train")
        elif path.suffix == ".parquet":
            table = datasets.load_dataset("parquet", data_files=str(path), split="train")
        elif path.suffix == ".arrow":
            table = datasets.Dataset.from_file(str(path))
        else:
            raise DataError("not a parquet/arrow file or a folder saved by `datasets`", file=path)
        label = str(path)
    if isinstance(table, datasets.DatasetDict):
        if split is not None and split not in table:
            raise DataError(f"split {split!r} not found; the dataset has splits {sorted(table)}", file=label)
        parts = [(split, table[split])] if split is not None else list(table.items())  # no split: all of them
    else:
        parts = [(split, table)]
    for part_split, part in parts:
        for index, fields in enumerate(part):
            yield Record(dict(fields), label if len(parts) == 1 else f"{label}[{part_split}]", index, root, part_split)


def load_hub_dataset(hub: str, config: str | None, split: str | None):
    """``datasets.load_dataset(hub, config, split=split)``, which also works offline from a warm cache.

    Offline (HF_HUB_OFFLINE=1), ``datasets`` looks only in its own prepared-arrow cache and ignores the hub cache, so a
    dataset fetched with ``hf download`` (or whose arrow cache was cleared) would not load by name. The hub cache's
    snapshot is a repository folder, which ``datasets`` loads exactly as it loads the hub repo (dataset card
    ``configs``, split file names), so offline that snapshot is used when it is there."""
    import datasets
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        try:
            snapshot = snapshot_download(hub, repo_type="dataset", local_files_only=True)
        except LocalEntryNotFoundError:
            snapshot = None  # maybe in the datasets arrow cache: load_dataset below looks there
        if snapshot is not None:
            return datasets.load_dataset(snapshot, config, split=split)
    try:
        return datasets.load_dataset(hub, config, split=split)
    except ConnectionError as exc:  # offline (or no network) and in neither cache
        raise DataError(
            f"not in the Hugging Face cache ({constants.HF_HUB_CACHE} or {datasets.config.HF_DATASETS_CACHE}) and the "
            f"hub cannot be reached ({exc}); download it once (`hf download --repo-type dataset {hub}`) or give a "
            "local source", file=f"hf:{hub}") from None


def is_table_source(source: str | None) -> bool:
    if source is None or source.startswith("hf:"):
        return True
    path = Path(source)
    if path.suffix in (".parquet", ".arrow"):
        return True
    return path.is_dir() and (
        (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or any(path.glob("*.parquet"))
    )


def require_source_exists(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise DataError("source not found", file=source)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Field helpers: a missing or ill-typed field is a DataError naming file, row and field.


def get_field(record: Record, name: str, *, required: bool = True, default: Any = None) -> Any:
    fields = record.fields or {}
    if name not in fields or fields[name] is None:
        if required and name in fields:  # the column exists: say the cell is empty, not that the column is missing
            raise DataError("the cell is null (the column is present; this row has no value in it)",
                            file=record.file, row=record.row, field=name)
        if required:
            have = ", ".join(sorted(fields)) or "none"
            raise DataError(f"missing column (row has: {have})", file=record.file, row=record.row, field=name)
        return default
    return fields[name]


@overload
def text_field(record: Record, name: str, *, required: Literal[True] = True, default: str | None = None) -> str: ...
@overload
def text_field(record: Record, name: str, *, required: bool, default: None = None) -> str | None: ...
def text_field(record: Record, name: str, *, required: bool = True, default: str | None = None) -> str | None:
    """The field as text (numbers converted); a required field is never None: missing, it raises DataError."""
    value = get_field(record, name, required=required, default=default)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # ids and numeric answers stored as numbers
    if not isinstance(value, str):
        raise DataError(f"expected text, got {type(value).__name__}", file=record.file, row=record.row, field=name)
    return value


def check_answer_type(answer_type: str, record: Record, field: str = "answer_type") -> str:
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"unknown answer type {answer_type!r}; valid: {', '.join(ANSWER_TYPES)}",
                        file=record.file, row=record.row, field=field)
    return answer_type


_INTEGER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def infer_answer_type(answer: str, choices: list[str] | None = None) -> str:
    """Free-form answers: integer / float when the text is a plain number (commas allowed), expression when it
    looks like LaTeX or arithmetic, else text (words, units). Rows with choices are multiple_choice."""
    if choices:
        return "multiple_choice"
    plain = answer.strip().replace(",", "")
    if _INTEGER.match(plain):
        return "integer"
    if _FLOAT.match(plain):
        return "float"
    if re.search(r"[\\^_{}=+*/()\[\]<>]", answer):
        return "expression"  # LaTeX or arithmetic: math-verify territory
    if re.search(r"\d", answer) and not re.search(r"[a-zA-Z]{3,}", answer):
        return "expression"  # "10x", "3 pi"; but "2191.7 metres" is text
    return "text"


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letter_to_choice(letter: str, choices: list[str], record: Record, field: str = "answer") -> str:
    """The choice text a letter answer points at; an out-of-range letter is a DataError."""
    letter = letter.strip().strip("()").strip()
    if len(letter) != 1 or letter.upper() not in LETTERS[: len(choices)]:
        raise DataError(f"answer {letter!r} is not a letter among {LETTERS[:len(choices)]}", file=record.file, row=record.row, field=field)
    return choices[LETTERS.index(letter.upper())]


def string_list(value: Any, record: Record, field: str) -> list[str]:
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"expected a list, got {type(value).__name__}", file=record.file, row=record.row, field=field)
    out = []
    for item in value:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise DataError(f"expected a list of strings, found {type(item).__name__}", file=record.file, row=record.row, field=field)
        out.append(item)
    return out


def image_list(value: Any) -> list[Any]:
    """An image cell as a list: one path/PIL/dict, or a list of them; empty string / None -> []."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if hasattr(value, "tolist") and not hasattr(value, "getpixel"):  # numpy array from parquet, not a PIL image
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def image_root(record: Record, relative: str, field: str) -> Path:
    """The folder ``relative`` (a row's image path) resolves against; a row read from the hub has none (the same
    error as :func:`~mhpo_vl.images.image_from_field` gives for a path without a root)."""
    if record.root is None:
        raise DataError(f"image path {relative!r} given but the dataset has no root folder",
                        file=record.file, row=record.row, field=field)
    return record.root
