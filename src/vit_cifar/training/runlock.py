"""One training per run folder: two in one folder would overwrite each other's checkpoints and logs. The first
holds an exclusive ``flock`` on ``<run>/.run.lock`` (released when the process ends, even by a kill); a second
is refused in one line before Hydra writes anything."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from vit_cifar.errors import ConfigError

LOCK_NAME = ".run.lock"
# The lock this process holds. A flock belongs to the open file, which a forked child (a DataLoader worker)
# shares: each child closes its copy at once, so that a killed training's orphaned workers, still alive for a
# few seconds, never keep its folder locked.
_held: set[int] = set()


def _close_in_child() -> None:
    for fd in _held:
        with suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def check_run_folder_free(folder: str | Path) -> None:
    """The pre-flight: raise, before Hydra writes anything, when a live process holds ``folder``'s lock."""
    if Path(folder).is_dir():
        with run_folder_lock(folder):  # taken and released at once
            pass


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs, or raise naming the process that holds it."""
    from lightning.pytorch.utilities import rank_zero_only

    # flock is POSIX's; the other ranks of a DDP run share rank 0's folder and lock
    if os.name != "posix" or getattr(rank_zero_only, "rank", 0) != 0:
        yield
        return
    import fcntl

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (process {pid})" if pid else ""
            raise ConfigError(
                f"run folder {folder} is in use by another training{who}: wait for it to end, or choose "
                "another folder with hydra.run.dir=<folder>"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held.add(fd)
        yield
    finally:
        _held.discard(fd)
        os.close(fd)  # releases the lock
