"""Writing files whole or not at all: the one implementation, for checkpoints and result files alike."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vit_cifar.errors import ConfigError


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


def check_output_place(path: str | Path, key: str, folder: bool) -> Path:
    """Before any work: that ``path`` (a folder to write into, or a file to write) can be made and written, so
    a command never computes its results and then fails to keep them. Raises ``ConfigError`` (exit code 2)
    naming ``key``: a file where a folder is wanted or the reverse, or a place this user cannot write."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a folder: give a folder to write into")
    if not folder and path.is_dir():
        raise ConfigError(f"{key}={path} is a folder: give a file name")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} lies under {existing}, which is a file: choose another place")
    try:  # the permission bits do not tell (root, ACLs, a read-only mount): try to create a file there
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{key}={path} cannot be written ({reason}: {existing}): choose a writable place"
        ) from None
    return path


@contextmanager
def staged_results(output_dir: str | Path, own_files: Iterable[str]) -> Iterator[Path]:
    """A hidden folder beside ``output_dir`` (same filesystem) to write a command's results into. When the block
    ends without an error, the files an earlier run of the command left in ``output_dir`` (glob patterns
    ``own_files``) are removed and the new ones moved in, a rename each; on an error nothing in ``output_dir``
    changes. Either way the staging folder is gone afterwards."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield staging
        output_dir.mkdir(parents=True, exist_ok=True)
        for pattern in own_files:
            for old in output_dir.glob(pattern):
                old.unlink()
        for new in sorted(staging.iterdir()):
            os.replace(new, output_dir / new.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
