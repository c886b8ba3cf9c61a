"""The Trainer's CheckpointIO plugin: checkpoints written atomically and read without running code."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import read_checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes and ``weights_only=True`` loads, always.

    Why not the default: it writes through an fsspec transaction whose temporary file lives in the system
    temp folder, so when that is another filesystem (a local /tmp, checkpoints on a network disk) the final
    move is a copy into the target, and nothing is fsynced: a kill or a crash can leave a truncated
    ``last.ckpt``. The run folder is a local path (``config.entry.check_output_place``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # weights_only whatever the caller asked: a checkpoint file must never be able to run code. On the CPU;
        # Lightning moves the weights and optimiser state to the device.
        return read_checkpoint(path)
