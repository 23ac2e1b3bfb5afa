"""Atomic, durable file writes: a temporary file in the target's folder, fsynced, then a rename.

A run interrupted mid-write never leaves a half-written result or checkpoint behind: readers see
the old file or the new one. The temporary file's bytes are fsynced before the rename and the
folder after it, so that after a crash or power loss the new name never points at a file whose
data had not reached the disk yet (a rename alone orders nothing on ext4/XFS with delayed
allocation), and the rename itself is on disk when `atomic_write` returns. Files get the
permissions of an ordinary `open(path, "w")` (0666 minus the user's umask), not the 0600 of a
temporary file, so collaborators can read results.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(d: str) -> None:
    """Makes a rename in folder `d` durable. Platforms that cannot open a folder (Windows) skip it."""
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Calls `write(fh)` on a temporary file next to `path`, fsyncs it, renames it to `path` and
    fsyncs the folder."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(d)


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def write_json(path: str, obj: Any, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=float) + "\n")
