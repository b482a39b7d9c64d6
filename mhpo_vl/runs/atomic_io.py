"""Output files that are either complete or not there: written to a temporary file in the same folder and renamed
over the target only when the writer finishes without error. An interrupted or failed writer leaves the previous
file (or none) in place and removes its temporary file; a reader never sees a half-written output.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


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


def write_durably(path: str | os.PathLike, text: str) -> None:
    """The whole of `text` at `path` or the old content, even after a power cut: written and fsynced to
    `<path>.tmp`, renamed over `path`, and the rename fsynced. For files only this process writes (run and eval
    files, checkpoint indexes); `atomic_text_output` is the streaming form for outputs next to user files."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, text)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_synced(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` in place and fsync it (for files inside a folder that is renamed into place later)."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the entries of `folder` (created, renamed files) durable, not only their contents."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
