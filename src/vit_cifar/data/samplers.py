"""Repeated augmentation (Hoffer et al. 2020, "Augment your batch"; DeiT): each training image several times
per epoch, each copy augmented independently because the dataset transforms every item it returns."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler


class RepeatedAugSampler(DistributedSampler):
    """Every image ``repeats`` times per epoch, the copies close together, seeded, one share per DDP rank.

    Each epoch: one permutation of the images from ``seed + epoch`` (the same on every rank), padded by
    wrapping around to a multiple of ``num_replicas`` as :class:`DistributedSampler` does, then dealt out
    ``rank::num_replicas`` so that ranks hold disjoint images. Each rank walks its images in groups of
    ``group_size`` and yields the ``repeats`` copies of a group in a random order. With
    ``group_size = batch_size // repeats`` the copies of an image share a batch (or straddle two) without
    sitting side by side, which matters because MixUp/CutMix pair each image with its neighbour in the batch.

    An epoch is ``repeats`` times longer than without it: divide ``trainer.max_epochs`` by ``repeats`` for the
    same compute. Being a :class:`DistributedSampler`, Lightning neither replaces nor wraps it under DDP and
    calls :meth:`set_epoch` each epoch.

    Args:
        dataset: the training set (only its length is used).
        repeats: copies of each image per epoch (DeiT uses 3).
        group_size: images whose copies are shuffled together.
        num_replicas, rank: the DDP world size and this process's rank.
        seed: None takes Lightning's global seed (``seed_everything``), the same on every rank.
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
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if repeats < 1 or group_size < 1:
            raise ValueError(f"repeats={repeats} and group_size={group_size} must be at least 1")
        self.repeats, self.group_size = repeats, group_size

    def __len__(self) -> int:
        return self.num_samples * self.repeats  # num_samples: ceil(len(dataset) / num_replicas) images

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        order = order.repeat(math.ceil(self.total_size / len(order)))[: self.total_size]  # pad by wrapping
        mine = order[self.rank :: self.num_replicas]
        chunks = []
        for group in mine.split(self.group_size):
            copies = group.repeat(self.repeats)  # (repeats * len(group),)
            chunks.append(copies[torch.randperm(len(copies), generator=g)])
        return iter(torch.cat(chunks).tolist())
