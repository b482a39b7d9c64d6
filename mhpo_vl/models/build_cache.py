"""Build a model or tokenizer folder once, atomically, so concurrent or interrupted builds never leave half of one."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def build_once(target: str | Path, build: Callable[[Path], Any], done_file: str = "config.json") -> Path:
    """`target`, built by `build(folder)` into a temporary folder beside it and renamed into place unless it is
    already there (holds `done_file`), so an interrupted or concurrent build never leaves half a folder (the first
    rename wins)."""
    import shutil
    import tempfile

    target = Path(target)
    if (target / done_file).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
