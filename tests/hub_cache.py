"""Write a Hugging Face hub cache on disk, in the layout ``huggingface_hub`` itself writes, so that tests can load
models and datasets BY HUB NAME with ``HF_HUB_OFFLINE=1`` like a user whose cache is warm.

Layout (huggingface_hub's ``file_download``): ``<cache>/<type>s--<org>--<name>/``
    blobs/<etag>                         file contents; etag = sha256 for LFS files, the git blob sha1 for others
    snapshots/<commit>/<path>            relative symlinks to ../../blobs/<etag> (one more ../ per sub-folder)
    refs/main                            the commit hash the snapshot is named by
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".parquet", ".bin")


def _etag(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id


def write_repo(cache: Path, repo_type: str, repo_id: str, files: Iterable[tuple[str, Path]]) -> Path:
    """Put ``files`` ((path in repo, file on disk) pairs) into the cache as one commit of ``repo_id``; returns the
    snapshot folder."""
    repo_dir = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    files = sorted(files)
    commit = hashlib.sha1(json.dumps([(name, _etag(src)) for name, src in files]).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    for name, src in files:
        etag = _etag(src)
        blob = repo_dir / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def write_model_repo(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """A model folder (config, weights, tokenizer, processor) as the hub repo ``repo_id``."""
    return write_repo(cache, "model", repo_id, [(f.name, f) for f in sorted(model_dir.iterdir()) if f.is_file()])


GEOMETRY3K_CARD = """---
dataset_info:
  features:
  - name: images
    sequence: image
  - name: problem
    dtype: string
  - name: answer
    dtype: string
  - name: id
    dtype: int64
  - name: choices
    sequence: string
  - name: ground_truth
    dtype: string
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: validation
    path: data/validation-*
  - split: test
    path: data/test-*
---
Geometry3K rows of the test fixture (lupantech/InterGPS, MIT), in the schema of hiyouga/geometry3k.
"""


def write_geometry3k_repo(cache: Path, fixture_dir: Path, splits: dict[str, list[int]], work_dir: Path) -> Path:
    """The Geometry3K fixture (hf_format.jsonl + its diagrams) as the hub dataset ``hiyouga/geometry3k``: one parquet
    file per split under data/ (images embedded as bytes, as ``push_to_hub`` writes them) and the dataset card whose
    ``configs`` name the split files. ``splits`` maps a split to the fixture ids it holds."""
    import datasets

    rows = {row["id"]: row for row in map(json.loads, (fixture_dir / "hf_format.jsonl").read_text().splitlines())}
    features = datasets.Features({
        "images": datasets.Sequence(datasets.Image()), "problem": datasets.Value("string"),
        "answer": datasets.Value("string"), "id": datasets.Value("int64"),
        "choices": datasets.Sequence(datasets.Value("string")), "ground_truth": datasets.Value("string"),
    })
    files = []
    for split, ids in splits.items():
        table = {name: [] for name in features}
        for problem_id in ids:
            row = rows[problem_id]
            for name in features:
                value = row[name]
                if name == "images":  # the bytes inside the parquet file, no path: as the hub copy stores them
                    value = [{"bytes": (fixture_dir / p).read_bytes(), "path": None} for p in value]
                table[name].append(value)
        parquet = work_dir / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(parquet))
        files.append((f"data/{parquet.name}", parquet))
    card = work_dir / "README.md"
    card.write_text(GEOMETRY3K_CARD)
    return write_repo(cache, "dataset", "hiyouga/geometry3k", [("README.md", card), *files])
