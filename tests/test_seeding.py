"""Per-image seeding (``ArrayDataset`` given ``(index, seed)``): the draws of ``torch.manual_seed(seed)``,
from the CPU generator alone."""

import pytest
import torch

from vit_cifar.data import CIFARDataModule

SEED_AUG = {"policy": "trivialaugment", "random_crop_padding": 4, "hflip_p": 0.5, "erasing_p": 0.5}


def _refuse(*args, **kwargs):
    raise AssertionError("per-image seeding seeded a device generator")


def test_per_image_seeding_draws_as_manual_seed_did_and_leaves_device_generators_alone(monkeypatch):
    dm = CIFARDataModule(
        source="synthetic", synthetic={"train_per_class": 1}, val_size=0, aug=SEED_AUG, num_workers=0
    )
    dm.setup("fit")
    items = [(i, 1000 + 7 * i) for i in range(len(dm.train_set))]
    expected = []
    for i, seed in items:  # what the transforms drew under torch.manual_seed, before this fix
        torch.manual_seed(seed)
        expected.append(dm.train_tf(dm.train_set.images[i]))
    # On a GPU machine these would reseed the training process's dropout, once per image.
    for module, name in [
        (torch.cuda, "manual_seed_all"),
        (torch.mps, "manual_seed"),
        (torch.xpu, "manual_seed_all"),
    ]:
        monkeypatch.setattr(module, name, _refuse)

    torch.default_generator.manual_seed(5)
    untouched = torch.rand(4)
    torch.default_generator.manual_seed(5)
    got = [dm.train_set[item][0] for item in items]
    assert torch.equal(torch.rand(4), untouched)  # the training process draws on as if nothing was seeded
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not torch.equal(dm.train_set[(0, 1)][0], dm.train_set[(0, 2)][0])  # the seed decides the draws
    with pytest.raises(AssertionError, match="device generator"):  # the tripwire is armed
        torch.manual_seed(0)
