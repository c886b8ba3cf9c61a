"""Test-only callbacks, loaded by a CLI subprocess through the real config:
``+callbacks.<name>={_target_: fault_callbacks.<Class>, ...}`` (the fault tests put this folder on its path).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import torch


def image_hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()[:16] for x in images.cpu()]


class PoisonBatch(L.Callback):
    """Fills the images of the batch at optimiser step ``at_step`` with NaN: a real non-finite loss on cue."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            batch[0].fill_(float("nan"))


class RecordSeenImages(L.Callback):
    """Writes ``seen-rank<r>.json`` into ``out_dir``: hashes of the images this rank trained on (per epoch)
    and validated on (last epoch), and the class of its training sampler."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train: dict[int, list[str]] = {}
        self.val: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.train.setdefault(trainer.current_epoch, []).extend(image_hashes(batch[0]))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val = []

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self.val.extend(image_hashes(batch[0]))

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sampler = type(trainer.train_dataloader.sampler).__name__
        record = {"world_size": trainer.world_size, "sampler": sampler, "train": self.train, "val": self.val}
        (self.out_dir / f"seen-rank{trainer.global_rank}.json").write_text(json.dumps(record))


class RecordAugmentationSeeds(L.Callback):
    """Writes ``aug-rank<r>.json`` into ``out_dir``: per epoch, the seed of this rank's augmentation generator
    (``data.device_aug``) and a hash of its first augmented training batch."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seeds: dict[int, int] = {}
        self.first_batch: dict[int, str] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.seeds:
            self.seeds[epoch] = trainer.datamodule.device_batches.generator.initial_seed()
            self.first_batch[epoch] = image_hashes(batch[0][:1])[0]

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "seeds": self.seeds, "first_batch": self.first_batch}
        (self.out_dir / f"aug-rank{trainer.global_rank}.json").write_text(json.dumps(record))


class DieAtStep(L.Callback):
    """Ends the process at once, as a kill does, when training reaches optimiser step ``at_step`` (nothing is
    flushed or saved on the way out)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            import os

            os._exit(9)
