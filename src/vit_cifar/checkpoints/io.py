"""The Trainer's CheckpointIO plugin: checkpoints written atomically and read without running code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import read_checkpoint


def _is_remote(path: str | Path) -> bool:
    return "://" in str(path)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes and ``weights_only=True`` loads, always.

    Why not the default: it writes through an fsspec transaction whose temporary file lives in the system
    temp folder, so when that is another filesystem (a local /tmp, checkpoints on a network disk) the final
    move is a copy into the target, and nothing is fsynced: a kill or a crash can leave a truncated
    ``last.ckpt``. Remote URLs (``s3://``, ...) keep Lightning's transaction, atomic on object stores.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or _is_remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        # weights_only whatever the caller asked: a checkpoint file must never be able to run code.
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return read_checkpoint(
            path
        )  # on the CPU; Lightning moves the weights and optimiser state to the device
