"""Writing files whole or not at all: the one implementation, for checkpoints and result files alike."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write a file so that readers, and a process killed halfway, only ever see the old file or the new one.
    ``data`` is text (UTF-8), bytes, or a function that writes into the open file (``torch.save``). The bytes go
    to a hidden file beside ``path`` (same filesystem, so the rename is atomic), are fsynced, then replace ``path``
    in one ``os.replace``; the folder is fsynced so the rename survives a crash. The hidden file is named with the
    process id, so that two writers of the same file never share (or delete) each other's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
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
