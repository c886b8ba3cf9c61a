"""``data.device_aug: auto``: the seed recipe augments on the GPU on CUDA (CPU workers cannot feed it, see
docs/performance.md) and in DataLoader workers elsewhere; the GPU path's draws are reproducible per epoch, so
a run resumed at an epoch's start draws them again."""

import pytest
import torch

from conftest import compose_config
from vit_cifar.config.schema import validate_config
from vit_cifar.data.gpu_aug import DeviceAugment, DeviceBatches
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from vit_cifar.devices import CPU, DeviceSpec
from vit_cifar.errors import ConfigError
from vit_cifar.training import run

T4, H100 = DeviceSpec.cuda(7, 5), DeviceSpec.cuda(9, 0)


@pytest.mark.parametrize(
    ("overrides", "device", "on_device"),
    [
        ([], T4, True),
        ([], H100, True),
        ([], CPU, False),
        ([], DeviceSpec("mps"), False),
        (["aug.policy=randaugment"], T4, False),  # no batched version: the workers, not an error
        (["data.repeated_aug=3"], T4, False),
        (["data.device_aug=false"], T4, False),
        (["data.device_aug=true"], CPU, True),
    ],
)
def test_the_seed_recipe_augments_on_the_device_on_cuda_by_default(tmp_path, overrides, device, on_device):
    cfg = compose_config(["experiment=seed", "data=synthetic", *overrides], tmp_path)
    assert cfg.data.device_aug in ("auto", True, False)
    datamodule = run.build_datamodule(cfg, device)
    assert (datamodule.device_augment is not None) is on_device


def test_train_makes_the_data_path_choice_for_its_device(tmp_path, monkeypatch):
    chosen = []

    def stop(cfg, device=None):
        chosen.append(device)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run, "build_datamodule", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        run.train(compose_config(["experiment=seed", "data=synthetic", "trainer=cpu"], tmp_path), device=T4)
    assert chosen == [T4]


def test_a_bad_value_names_the_choices(tmp_path):
    cfg = compose_config(["data=synthetic", "data.device_aug=sometimes"], tmp_path)
    with pytest.raises(ConfigError, match=r"^data.device_aug='sometimes' is unknown: use one of auto, true"):
        validate_config(cfg, device=T4)  # the schema's check, before any work


def test_an_epoch_of_the_gpu_path_draws_the_same_fresh_or_after_earlier_epochs():
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(48) % 10
    augment = DeviceAugment({"policy": "trivialaugment", "erasing_p": 0.5}, CIFAR10_MEAN, CIFAR10_STD, 10)

    def epoch(batches: DeviceBatches, e: int) -> list[torch.Tensor]:
        batches.sampler.set_epoch(e)
        return [augment(x, y, generator=batches.generator)[0] for x, y in batches]

    ran = DeviceBatches(images, labels, 16, seed=7)
    for e in (0, 1):
        epoch(ran, e)
    resumed = epoch(DeviceBatches(images, labels, 16, seed=7), 2)  # a new process, resumed at epoch 2
    assert all(torch.equal(a, b) for a, b in zip(epoch(ran, 2), resumed, strict=True))
    assert not torch.equal(epoch(ran, 1)[0], resumed[0])
