"""Dataset adapters: every source format becomes canonical :class:`~mhpo_vl.types.Sample` records.

    from mhpo_vl.datasets import load_dataset
    samples = load_dataset("geometry3k", source="path/to/geometry3k", split="train")

Adapters register themselves by name (see :data:`DATASETS`); a user module adds one with ``@register_dataset``,
or a column-mapping YAML needs no code at all (``load_dataset("my_data.yaml")``). See docs/datasets.md.
"""
# Importing the adapter modules registers them. They import only the standard library and Pillow at module level.
from mhpo_vl.datasets import column_mapping, geometry3k, geosynth, mathverse, mathvision, mathvista, text_math  # noqa: F401
from mhpo_vl.datasets.base import (
    DATASETS,
    DatasetAdapter,
    LoadedSamples,
    Record,
    SkippedRow,
    adapter_for,
    import_plugins,
    load_dataset,
    register_dataset,
)
from mhpo_vl.images import DataError

__all__ = [
    "DATASETS", "DataError", "DatasetAdapter", "LoadedSamples", "Record", "SkippedRow", "adapter_for", "import_plugins",
    "load_dataset", "register_dataset",
]
