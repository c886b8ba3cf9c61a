"""The training order: a seeded shuffle per epoch, one share per DDP rank, each image handed to the dataset
with the seed of its augmentation; and repeated augmentation (Hoffer et al. 2020, "Augment your batch"; DeiT):
each training image several times per epoch, each copy augmented independently."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized

import numpy as np
import torch
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
    each index paired with the seed its augmentation is drawn from (:func:`augmentation_seeds`).

    So the random crops, flips and policies of an epoch depend on the run's seed, the epoch and the item's place
    in it, never on which DataLoader worker decodes it, how many there are, whether they persist, or whether
    the run was resumed: a killed run resumes bit for bit with workers (``ArrayDataset`` applies the seed).
    Being a :class:`DistributedSampler`, Lightning neither replaces nor wraps it under DDP and calls
    :meth:`set_epoch` each epoch. Only the dataset's length is used; ``seed=None`` takes Lightning's global
    seed (``seed_everything``), the same on every rank.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int | None = None) -> None:
        seed = run_seed() if seed is None else seed
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)

    def indices(self) -> list[int]:
        """This epoch's images for this rank, in order."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.indices()
        return iter(zip(order, augmentation_seeds(self.seed, self.epoch, self.rank, len(order)), strict=True))


class RepeatedAugSampler(SeededShuffleSampler):
    """Every image ``repeats`` times per epoch, the copies close together, seeded, one share per DDP rank.

    Each epoch: one permutation of the images from ``seed + epoch`` (the same on every rank), padded by
    wrapping around to a multiple of ``num_replicas`` as :class:`DistributedSampler` does, then dealt out
    ``rank::num_replicas`` so that ranks hold disjoint images. Each rank walks its images in groups of
    ``group_size`` and yields the ``repeats`` copies of a group in a random order. With
    ``group_size = batch_size // repeats`` the copies of an image share a batch (or straddle two) without
    sitting side by side, which matters because MixUp/CutMix pair each image with its neighbour in the batch.

    An epoch is ``repeats`` times longer than without it: divide ``trainer.max_epochs`` by ``repeats`` for the
    same compute. Each copy has a seed of its own (its position), so the copies are augmented differently.
    """

    def __init__(
        self,
        dataset: Sized,
        repeats: int,
        group_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        if repeats < 1 or group_size < 1:
            raise ValueError(f"repeats={repeats} and group_size={group_size} must be at least 1")
        self.repeats, self.group_size = repeats, group_size

    def __len__(self) -> int:
        return self.num_samples * self.repeats  # num_samples: ceil(len(dataset) / num_replicas) images

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        order = order.repeat(math.ceil(self.total_size / len(order)))[: self.total_size]  # pad by wrapping
        mine = order[self.rank :: self.num_replicas]
        chunks = []
        for group in mine.split(self.group_size):
            copies = group.repeat(self.repeats)  # (repeats * len(group),)
            chunks.append(copies[torch.randperm(len(copies), generator=g)])
        return torch.cat(chunks).tolist()
