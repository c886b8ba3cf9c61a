"""The LightningDataModule: one of three sources, a stratified validation split, seeded subsets (class by
class), augmentation."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, Sampler

from vit_cifar.data import sources
from vit_cifar.data.gpu_aug import DeviceAugment, DeviceBatches
from vit_cifar.data.samplers import SeededShuffleSampler, run_seed
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD, batch_mix, eval_transform, train_transform
from vit_cifar.devices import DEVICE_AUG
from vit_cifar.errors import (
    COUNT,
    POSITIVE_INT,
    PROBABILITY,
    Choice,
    ConfigError,
    DataError,
    Flag,
    Hex,
    Number,
    Numbers,
)

SOURCES = ("auto", "torchvision", "folder", "synthetic")
# The values each checked argument of CIFARDataModule takes: config.schema checks them before any work.
RULES = {
    "source": Choice(SOURCES),
    "num_classes": Number(low=2, integer=True),
    "image_size": POSITIVE_INT,
    "val_size": COUNT,
    "split_seed": COUNT,
    "train_subset": Number(low=1, integer=True, optional=True),
    "test_subset": Number(low=1, integer=True, optional=True),
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "num_workers": Number(low=0, integer=True, optional=True),
    "repeated_aug": Number(low=1, integer=True, hint="1: off; DeiT: 3"),
    "download": Flag(),
    "skip_bad": Flag(),
    "sha256": Hex(64),
    "device_aug": DEVICE_AUG,
    "mean": Numbers(PROBABILITY, 3),  # per RGB channel, of images scaled to [0, 1]
    "std": Numbers(Number(low=0, low_open=True), 3),
    "synthetic.train_per_class": POSITIVE_INT,
    "synthetic.test_per_class": POSITIVE_INT,
    "synthetic.noise": Number(low=0),
    "synthetic.seed": COUNT,
}
log = logging.getLogger(__name__)


class ArrayDataset(Dataset):
    """Images held in memory as one uint8 (N, 3, H, W) tensor; ``transform`` runs per item, in the workers.
    An item asked for as ``(index, seed)`` (the training sampler's) is transformed with torch's CPU random
    numbers drawn from ``seed``, whichever process does it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        x, y = self.images[i], self.labels[i]
        if self.transform is None or seed is None:
            return (x if self.transform is None else self.transform(x)), y
        # The CPU generator's state is put back afterwards, so that in the training process (num_workers=0)
        # dropout and MixUp draw as they would have. Only that generator is seeded: torch.manual_seed would
        # also seed every device backend, 100 times the cost per image, and reseed the GPU's dropout.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(x), y


class LazyStartDataLoader(DataLoader):
    """A DataLoader whose iterator starts (and its workers draw their first items) at the first batch, not at
    ``iter()``. Lightning makes a resumed run's first training iterator before it gives the sampler the epoch
    (``set_epoch``), and workers prefetch at once: they would draw the order and the augmentation seeds of
    epoch 0 for the epoch the run resumes at."""

    def __iter__(self) -> Iterator:  # a generator: runs nothing before its first next()
        yield from super().__iter__()


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10 (or any image-folder dataset) for training, validation and test. Each argument is a key of
    the ``data`` config group, described in ``configs/data/cifar10.yaml``. ``batch_size`` is the global batch:
    under DDP each process takes ``batch_size / world size`` (config.schema checks that it divides), so a recipe
    trains the same on any number of GPUs: its learning rate, warmup and schedule were tuned for that many images
    per step. ``device_aug``: the GPU data path (:mod:`vit_cifar.data.gpu_aug`), ``auto``
    resolved for the device by ``training.run.build_datamodule`` (left unresolved it means the workers).
    """

    def __init__(
        self,
        root: str = "data",
        source: str = "auto",
        dataset: str = "cifar10",
        num_classes: int = 10,
        download: bool = True,
        cache_dir: str | None = ".cache/vit_cifar",
        image_size: int = 32,
        val_size: int = 5000,
        split_seed: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        repeated_aug: int = 1,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        synthetic: dict | None = None,
        aug: dict | None = None,
        skip_bad: bool = False,
        sha256: str | None = None,
        device_aug: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(os.path.expanduser(str(root)))
        self.source = sources.resolve_source(source, self.root)
        self.dataset, self.num_classes, self.download = dataset, num_classes, download
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.image_size, self.val_size, self.split_seed = image_size, val_size, split_seed
        self.train_subset, self.test_subset = train_subset, test_subset
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if num_workers is None else num_workers
        self.pin_memory = pin_memory  # None: pinned when the batches go to a CUDA device (faster copies)
        self.persistent_workers = persistent_workers and self.num_workers > 0
        self.repeated_aug, self.mean, self.std = repeated_aug, tuple(mean), tuple(std)
        self.synthetic, self.skip_bad, self.sha256 = dict(synthetic or {}), skip_bad, sha256
        self.aug = dict(aug or {})
        self.train_tf = train_transform(self.aug, self.mean, self.std, image_size)
        self.eval_tf = eval_transform(self.mean, self.std)
        self.mix = batch_mix(self.aug, num_classes)
        self.device_augment = None
        if device_aug is True:  # the GPU data path: augmentation of whole batches on the device
            self.device_augment = DeviceAugment(self.aug, self.mean, self.std, num_classes)
        self.arrays: sources.ImageArrays | None = None
        self.train_set = self.val_set = self.test_set = None
        self.device_batches: DeviceBatches | None = None  # device_aug: this epoch's batches and generator

    def prepare_data(self) -> None:
        """Download only (once per node); ``setup`` does the rest."""
        if self.source == "torchvision":  # the smaller split: only the check (and download) is wanted
            sources.torchvision_split(self.root, self.dataset, train=False, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        arrays = self.load_arrays()
        train_idx, val_idx = stratified_split(arrays.train_y, self.val_size, self.split_seed)
        if self.train_subset:
            subset = balanced_subset(
                arrays.train_y[train_idx], self.train_subset, self.split_seed, "data.train_subset"
            )
            train_idx = train_idx[subset]
        test_idx = np.arange(len(arrays.test_y))
        if self.test_subset:
            test_idx = balanced_subset(arrays.test_y, self.test_subset, self.split_seed, "data.test_subset")
        # Classes take turns in the evaluation sets, so any first batches sample every class.
        val_idx = val_idx[interleaved_order(arrays.train_y[val_idx], self.split_seed)]
        test_idx = test_idx[interleaved_order(arrays.test_y[test_idx], self.split_seed)]

        def dataset(split: str, index: np.ndarray, transform) -> ArrayDataset:
            x, y = getattr(arrays, f"{split}_x")[index], getattr(arrays, f"{split}_y")[index]
            images = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 3, H, W)
            return ArrayDataset(torch.from_numpy(images), torch.from_numpy(y), transform)

        train_tf = None if self.device_augment is not None else self.train_tf  # device_aug: uint8 batches
        self.train_set = dataset("train", train_idx, train_tf)
        self.val_set = dataset("train", val_idx, self.eval_tf) if len(val_idx) else None
        self.test_set = dataset("test", test_idx, self.eval_tf)

    def load_arrays(self) -> sources.ImageArrays:
        """Decode the source once per process; later calls (fit, then test) reuse the arrays."""
        if self.arrays is not None:
            return self.arrays
        if self.source == "synthetic":
            arrays = sources.make_synthetic(self.num_classes, image_size=self.image_size, **self.synthetic)
        elif self.source == "folder":
            root, size = self.root, self.image_size
            arrays = sources.load_image_folder(root, size, self.cache_dir, self.skip_bad, self.sha256)
        else:
            arrays = sources.load_torchvision(self.root, self.dataset)
        if arrays.skipped and rank_zero_only.rank == 0:
            skipped = f"{len(arrays.skipped)} unreadable files in {self.root} (data.skip_bad=true)"
            log.warning(f"skipped {skipped}, e.g. {arrays.skipped[0]}")
        if len(arrays.classes) != self.num_classes:
            raise DataError(
                f"{arrays.description} has {len(arrays.classes)} classes but data.num_classes={self.num_classes}: "
                f"set data.num_classes={len(arrays.classes)} (the model's num_classes follows it)"
            )
        self.arrays = arrays
        return arrays

    @property
    def classes(self) -> list[str]:
        return self.load_arrays().classes

    @property
    def description(self) -> str:
        return self.load_arrays().description

    @property
    def skipped_files(self) -> list[str]:
        return self.load_arrays().skipped

    def _world_and_rank(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None, drop_last=False):
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return LazyStartDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,  # the training order is the sampler's; evaluation keeps the dataset's
            drop_last=drop_last,
            # A generator of its own for the seed a DataLoader draws for its workers at every new iterator
            # (each epoch, unless workers persist): so the training process's generator, which dropout and
            # MixUp draw from, advances the same with any number of workers, persistent or not.
            generator=torch.Generator().manual_seed(run_seed()),
            num_workers=self.num_workers,
            pin_memory=on_cuda if self.pin_memory is None else self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Validation and test: under DDP each rank takes every world_size-th image and no image twice.
        Lightning's default, a ``DistributedSampler``, pads the last round with repeated images so that every
        rank has as many; with 3, 6 or 7 GPUs some of the 10,000 test images would then count twice. Without
        padding, ranks may run one batch fewer than others, which evaluation allows: nothing is synchronised
        per batch (the metrics are reduced once, at the epoch's end)."""
        world, rank = self._world_and_rank()
        if len(dataset) < world:
            raise ConfigError(f"{len(dataset)} evaluation images cannot be shared out over {world} processes")
        shared = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return self._loader(dataset, self.eval_batch_size, shared if world > 1 else None)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        """This rank's share of a seeded shuffle (each image ``repeated_aug`` times), every item with the seed
        of its augmentation: the same draws with any number of workers, or resumed. With ``device_aug``, the
        training images moved once to this process's device and batched there."""
        world, rank = self._world_and_rank()
        batch_size = self.batch_size // world
        if self.device_augment is not None:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            images, labels = self.train_set.images.to(device), self.train_set.labels.to(device)
            # Shuffled from the run's seed (not torch's, which each rank reseeds from (seed, rank)), so every
            # rank draws the same permutation and takes its own share of it.
            self.device_batches = DeviceBatches(images, labels, batch_size, run_seed(), rank, world)
            return self.device_batches
        # groups of batch_size // repeated_aug images, so that the copies of an image share a batch
        group = max(1, batch_size // self.repeated_aug)
        sampler = SeededShuffleSampler(
            self.train_set, world, rank, repeats=self.repeated_aug, group_size=group
        )
        # drop_last keeps every step's batch (and MixUp's partner pool) full-sized, when there is more than one
        return self._loader(self.train_set, batch_size, sampler, drop_last=len(sampler) > batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader(self.val_set) if self.val_set else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """MixUp/CutMix on the device, on training batches only: targets become class probabilities. With
        ``device_aug`` the whole augmentation runs here, on the uint8 batch."""
        if self.trainer is not None and self.trainer.training:
            if self.device_augment is not None:
                return self.device_augment(*batch, generator=self.device_batches.generator)
            if self.mix is not None:
                batch = self.mix(*batch)
        return batch


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_size`` images drawn per class in proportion to the class sizes."""
    if not 0 <= val_size < len(labels):
        raise ConfigError(
            f"data.val_size={val_size} must be in [0, {len(labels) - 1}] for {len(labels)} images"
        )
    classes, counts = np.unique(labels, return_counts=True)
    quota = _apportion(counts, val_size)
    rng = np.random.default_rng(seed)
    val = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def balanced_subset(labels: np.ndarray, size: int, seed: int, key: str) -> np.ndarray:
    """Indices of ``size`` images, as equal a number per class as possible, drawn at random with ``seed``."""
    classes, counts = np.unique(labels, return_counts=True)
    if not 0 < size <= len(labels):
        raise ConfigError(f"{key}={size} must be in [1, {len(labels)}] (the images available)")
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), size // len(classes))
    per_class[rng.permutation(len(classes))[: size % len(classes)]] += 1
    if (per_class > counts).any():  # hand what small classes lack to the others, largest first
        per_class = _apportion(counts, size)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, per_class, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def interleaved_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of ``labels``' positions in which the classes take turns (each class's images shuffled):
    every prefix is as class-balanced as it can be. Evaluation sets are kept in this order, so a limited run
    (``limit_val_batches``, ``limit_test_batches``) or the first images shown in TensorBoard sample every
    class, not the first class of a class-sorted folder."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    classes = labels[shuffled]
    turn = np.empty(len(labels), dtype=np.int64)  # the image's place within its class, after shuffling
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        turn[members] = np.arange(len(members))
    return shuffled[np.lexsort((classes, turn))]  # by turn, then class: c0, c1, ..., c9, c0, c1, ...


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` across classes in proportion to ``counts`` (largest remainders), never above a count."""
    exact = counts * total / counts.sum()
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: total - quota.sum()]:
        quota[i] += 1
    return np.minimum(quota, counts)
