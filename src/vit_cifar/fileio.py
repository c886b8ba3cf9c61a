"""Writing files whole or not at all: the one implementation, for checkpoints and result files alike."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def partial_path(path: Path) -> Path:
    """The hidden temporary file beside ``path`` that one process writes before the rename: named with the
    process id, so that two writers of the same file never share (or delete) each other's."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file so that readers, and a process killed halfway, only ever see the old file or the new one.

    The bytes go to :func:`partial_path` beside ``path`` (same filesystem, so the rename is atomic), are
    fsynced, then replace ``path`` in one ``os.replace``; the folder is fsynced so the rename survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # directories cannot be opened for fsync on Windows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """:func:`atomic_write` of text (UTF-8) or bytes."""
    payload = data.encode() if isinstance(data, str) else data
    atomic_write(path, lambda f: f.write(payload))
