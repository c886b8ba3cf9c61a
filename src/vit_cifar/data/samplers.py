"""The training order: a seeded shuffle per epoch, one share per DDP rank, each image handed to the dataset
with the seed of its augmentation; and repeated augmentation (Hoffer et al. 2020, "Augment your batch"; DeiT):
each training image several times per epoch, each copy augmented independently."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized

import numpy as np
from torch.utils.data import DistributedSampler

_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive positions over the seed space (Weyl sequence)


def run_seed() -> int:
    """The run's seed as ``seed_everything`` publishes it to every process (``PL_GLOBAL_SEED``); 0 without it."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def augmentation_seeds(seed: int, epoch: int, rank: int, count: int) -> list[int]:
    """The seed of each of ``count`` items of an epoch: a function of (seed, epoch, rank, position) alone."""
    base = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0])
    return [((base + k * _GOLDEN) % 2**64) >> 1 for k in range(count)]


class SeededShuffleSampler(DistributedSampler):
    """This rank's share of a permutation of the images drawn from ``seed + epoch`` (the same on every rank),
    each index paired with the seed of its augmentation (:func:`augmentation_seeds`): an epoch's crops, flips
    and policies never depend on which DataLoader worker decodes an item, how many there are, or a resume
    (``ArrayDataset`` applies the seed). Being a :class:`DistributedSampler`, Lightning neither replaces nor
    wraps it under DDP and calls :meth:`set_epoch` each epoch. ``seed=None``: Lightning's global seed.

    ``repeats`` above 1: every image that many times per epoch (divide ``trainer.max_epochs`` by it for the
    same compute), each copy with its own seed. This rank walks its images in groups of ``group_size`` and
    yields the copies of a group in a random order: with ``group_size = batch_size // repeats`` the copies of an
    image share a batch (or straddle two) without sitting side by side, which matters because MixUp/CutMix pair
    each image with its neighbour in the batch.
    """

    def __init__(self, dataset: Sized, num_replicas=1, rank=0, seed=None, repeats=1, group_size=1) -> None:
        seed = run_seed() if seed is None else seed
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.repeats, self.group_size = repeats, group_size

    def __len__(self) -> int:
        return self.num_samples * self.repeats  # num_samples: ceil(len(dataset) / num_replicas) images

    def indices(self) -> list[int]:
        """This epoch's images for this rank, in order."""
        order = list(super().__iter__())
        if self.repeats == 1:
            return order
        rng = np.random.default_rng([self.seed, self.epoch])  # the order of the copies within each group
        copies = []
        for start in range(0, len(order), self.group_size):
            copies += rng.permutation(order[start : start + self.group_size] * self.repeats).tolist()
        return copies

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.indices()
        return iter(zip(order, augmentation_seeds(self.seed, self.epoch, self.rank, len(order)), strict=True))
