"""The training samplers: repeated augmentation's epochs, seeding and DDP shares; the seeds of each item's
augmentation, which make an epoch's batches the same with any number of DataLoader workers; the DataModule's
use of them."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler

from vit_cifar.data import CIFARDataModule
from vit_cifar.data.datamodule import RULES
from vit_cifar.data.samplers import SeededShuffleSampler
from vit_cifar.errors import ConfigError, check


def _epoch(n, repeats=3, group_size=4, world=1, rank=0, seed=0, epoch=0):
    sampler = SeededShuffleSampler(range(n), world, rank, seed, repeats=repeats, group_size=group_size)
    sampler.set_epoch(epoch)
    return sampler.indices(), len(sampler)


def test_each_image_appears_k_times_per_epoch_with_its_copies_together():
    order, length = _epoch(20, repeats=3, group_size=4)
    assert length == len(order) == 60
    assert Counter(order) == {i: 3 for i in range(20)}
    for start in range(0, 60, 12):  # each group of 4 images yields its 12 copies before the next group
        assert set(Counter(order[start : start + 12]).values()) == {3}
        assert len(set(order[start : start + 12])) == 4
    assert order[:12] != sorted(order[:12])  # the copies of a group come in a shuffled order


def test_order_is_seeded_and_changes_with_the_epoch(monkeypatch):
    first, _ = _epoch(50, seed=7)
    assert first == _epoch(50, seed=7)[0]
    assert first != _epoch(50, seed=7, epoch=1)[0]
    assert first != _epoch(50, seed=8)[0]
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what seed_everything sets: the run's seed by default
    assert SeededShuffleSampler(range(50), repeats=3, group_size=4).indices() == first


def test_ranks_get_disjoint_images_and_equal_lengths():
    shares = [_epoch(30, repeats=2, world=3, rank=r)[0] for r in range(3)]
    assert [len(s) for s in shares] == [20, 20, 20]
    images = [set(s) for s in shares]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    assert Counter(i for s in shares for i in s) == {i: 2 for i in range(30)}
    # 10 images on 3 ranks: padded by wrapping around, as DistributedSampler does, so the lengths still agree
    shares = [_epoch(10, repeats=2, world=3, rank=r)[0] for r in range(3)]
    assert [len(s) for s in shares] == [8, 8, 8]
    assert set().union(*shares) == set(range(10))


def test_datamodule_uses_it_for_training_only_and_checks_the_value():
    sizes = {"train_per_class": 10, "test_per_class": 2}
    dm = CIFARDataModule(
        source="synthetic",
        synthetic=sizes,
        val_size=20,
        batch_size=16,
        num_workers=0,
        cache_dir=None,
        repeated_aug=3,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)  # so Lightning's DDP neither replaces nor wraps it
    assert loader.sampler.repeats == 3
    assert loader.sampler.group_size == 5  # 16 // 3 images, so an image's copies share a batch
    assert len(loader) == 80 * 3 // 16  # 80 training images, 3 copies each, full batches only
    x, _ = next(iter(loader))
    assert x.shape == (16, 3, 32, 32)
    assert not isinstance(dm.val_dataloader().sampler, SeededShuffleSampler)
    labels = torch.cat([y for _, y in loader])
    assert torch.bincount(labels).tolist() == [24] * 10  # 8 images per class, 3 times each
    for bad, problem in ((0, "is out of range"), (1.5, "is not an integer")):  # the schema's rule of the key
        with pytest.raises(ConfigError, match=rf"^data.repeated_aug={bad} {problem}: use an integer >= 1"):
            check("data.repeated_aug", bad, RULES["repeated_aug"])


def _datamodule(**kwargs) -> CIFARDataModule:
    sizes = {"train_per_class": 6, "test_per_class": 2}
    dm = CIFARDataModule(
        source="synthetic", synthetic=sizes, val_size=0, batch_size=8, cache_dir=None, **kwargs
    )
    dm.setup("fit")
    return dm


def _epoch_batches(dm: CIFARDataModule, epoch: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # as Lightning's fit loop does at each epoch's start
    batches = iter(loader)  # draws the DataLoader's own base seed from the global generator, as always
    state = torch.get_rng_state()
    images = [x for x, _ in batches]
    # the augmentations take nothing from the training process's generator: dropout and MixUp draw as before
    assert torch.equal(torch.get_rng_state(), state)
    return images


def test_every_item_comes_with_its_own_seed_from_seed_epoch_and_position(monkeypatch):
    sampler = SeededShuffleSampler(range(40), seed=3)
    items = list(sampler)
    assert sorted(i for i, _ in items) == list(range(40))  # one epoch: each image once
    assert len({s for _, s in items}) == 40
    assert items == list(SeededShuffleSampler(range(40), seed=3))
    sampler.set_epoch(1)
    assert not {s for _, s in items} & {s for _, s in sampler}  # another epoch draws other augmentations
    copies = SeededShuffleSampler(range(10), seed=3, repeats=3, group_size=2)
    assert len({s for _, s in copies}) == 30  # an image's copies are augmented differently
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert list(SeededShuffleSampler(range(40))) == items


@pytest.mark.parametrize("repeated_aug", [1, 2])
def test_an_epoch_is_the_same_with_any_number_of_workers_and_any_global_random_state(repeated_aug):
    """The augmentations are drawn from the sampler's seeds: neither the workers (how many, persistent or
    not, freshly started by a resume) nor the training process's random state change an epoch's batches."""
    aug = {"random_crop_padding": 4, "hflip_p": 0.5, "policy": "trivialaugment", "erasing_p": 0.5}
    common = {"aug": aug, "repeated_aug": repeated_aug}
    torch.manual_seed(0)
    in_process = _epoch_batches(_datamodule(num_workers=0, **common), epoch=2)
    torch.manual_seed(1)
    with_workers = _epoch_batches(_datamodule(num_workers=2, persistent_workers=True, **common), epoch=2)
    assert len(in_process) == len(with_workers) > 1
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers, strict=True))
    other_epoch = _epoch_batches(_datamodule(num_workers=0, **common), epoch=3)
    assert not torch.equal(in_process[0], other_epoch[0])
