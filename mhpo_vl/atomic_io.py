"""Output files that are either complete or not there: written to a temporary file in the same folder and renamed
over the target only when the writer finishes without error. An interrupted or failed writer leaves the previous
file (or none) in place and removes its temporary file; a reader never sees a half-written output.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


@contextmanager
def atomic_text_output(path: str | os.PathLike) -> Iterator[TextIO]:
    """``with atomic_text_output(p) as f: f.write(...)``: ``p`` appears (or is replaced) only at the end.

    A symlink ``p`` is followed: its target is replaced, the link stays. The data is fsynced before the rename, so
    after a power cut the file holds the old or the new content, never a truncated mix."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode a plain open() would
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or (both existing) one inode (hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
