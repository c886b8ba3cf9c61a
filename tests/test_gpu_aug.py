"""The GPU data path's batched augmentation, run on CPU tensors: per-sample draws, torchvision's
distributions and torchvision's operations."""

import csv
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from faults_support import error_lines, train_cli
from vit_cifar.data import gpu_aug
from vit_cifar.data.gpu_aug import (
    NUM_BINS,
    OPS,
    DeviceAugment,
    DeviceBatches,
    apply_trivial_augment,
    magnitude_table,
    random_crop,
    random_erasing,
    sample_trivial_augment,
)
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_transform
from vit_cifar.training.run import train

SEED_AUG = {
    "policy": "trivialaugment",
    "erasing_p": 0.25,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
    "mix_prob": 1.0,
}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Natural-ish uint8 images: smooth colour gradients plus noise, so every op changes them."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32)
    rows, cols = ramp[None, :, None], ramp[None, None, :]  # (1, 32, 1), (1, 1, 32)
    base = 40 + 160 * (rows * torch.rand(n, 3, 1, 1, generator=g) + cols * 0.3)  # (n, 3, 32, 32)
    noisy = base + 25 * torch.randn(n, 3, 32, 32, generator=g)
    return noisy.clamp(0, 255).to(torch.uint8)


def test_magnitude_bins_are_torchvisions():
    table, signed = magnitude_table(NUM_BINS, 32, 32)
    space = v2.TrivialAugmentWide._AUGMENTATION_SPACE
    assert list(OPS) == list(space) and len(OPS) == 14
    for k, (name, (magnitudes_fn, is_signed)) in enumerate(space.items()):
        expected = magnitudes_fn(NUM_BINS, 32, 32)
        expected = torch.zeros(NUM_BINS) if expected is None else expected.float()
        torch.testing.assert_close(table[k], expected, msg=name)
        assert bool(signed[k]) == is_signed


def test_each_sample_draws_its_own_op_uniformly_and_its_own_magnitude():
    n = 14 * 2000
    g = torch.Generator().manual_seed(0)
    op, magnitude = sample_trivial_augment(n, 32, 32, generator=g)
    counts = torch.bincount(op, minlength=len(OPS)).double()
    chi2 = float(((counts - n / len(OPS)) ** 2 / (n / len(OPS))).sum())
    assert chi2 < 34.5  # chi-square, 13 degrees of freedom, p = 0.001: torchvision's uniform choice of op
    table, signed = magnitude_table(NUM_BINS, 32, 32)
    for k, name in enumerate(OPS):
        mine = magnitude[op == k]
        if table[k].abs().sum() == 0:
            assert (mine == 0).all(), name
            continue
        bins = (mine.abs()[:, None] == table[k][None, :]).float().argmax(dim=1)
        assert (mine.abs() == table[k][bins]).all(), f"{name}: a magnitude outside torchvision's bins"
        per_bin = torch.bincount(bins, minlength=NUM_BINS)
        if name != "Posterize":  # Posterize's bins repeat values (8, 8, 8, 7, ...): only the set is checked
            assert per_bin.min() > 0.5 * len(mine) / NUM_BINS, f"{name}: bins not drawn uniformly"
        negative = float((mine < 0).float().mean())
        assert (0.44 < negative < 0.56) if signed[k] else negative == 0.0, name


def test_different_samples_get_different_operations():
    same = _images(1).expand(256, -1, -1, -1).contiguous()  # 256 copies of one image
    op, magnitude = sample_trivial_augment(256, 32, 32, generator=torch.Generator().manual_seed(1))
    out = apply_trivial_augment(same, op, magnitude)
    distinct = {tuple(img.flatten().tolist()) for img in out}
    assert len(distinct) > 100  # per-sample ops and magnitudes; torchvision's v2 on a batch would give 1


@pytest.mark.parametrize(
    "name",
    [
        "ShearX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
        "Posterize",
        "Solarize",
        "AutoContrast",
        "Equalize",
    ],
)
def test_a_fixed_op_equals_torchvisions_on_each_image(name):
    images = _images(24, seed=3)
    k = OPS.index(name)
    table, signed = magnitude_table(NUM_BINS, 32, 32)
    reference = v2.TrivialAugmentWide()
    for bin_ in (3, 17, 30):
        for sign in (1.0, -1.0) if signed[k] else (1.0,):
            magnitude = sign * float(table[k, bin_])
            out = apply_trivial_augment(images, torch.full((24,), k), torch.full((24,), magnitude))
            expected = torch.stack(
                [
                    reference._apply_image_or_video_transform(
                        img, name, magnitude, InterpolationMode.NEAREST, reference._fill
                    )
                    for img in images
                ]
            )
            diff = (out.int() - expected.int()).abs()
            # Floating-point contraction can move a blended level by 1 on a few pixels in a thousand.
            assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"{name} magnitude {magnitude}"


def test_mixed_ops_in_one_batch_each_follow_their_own():
    images = _images(len(OPS) * 3, seed=4)
    op = torch.arange(len(OPS)).repeat(3)
    table, _ = magnitude_table(NUM_BINS, 32, 32)
    magnitude = table[op, 12]
    together = apply_trivial_augment(images, op, magnitude)
    for i in range(len(images)):
        alone = apply_trivial_augment(images[i : i + 1], op[i : i + 1], magnitude[i : i + 1])
        assert torch.equal(together[i], alone[0]), OPS[op[i]]


def test_the_gpu_branch_computes_what_the_cpu_branch_does(monkeypatch):
    images = _images(64, seed=7)
    op, magnitude = sample_trivial_augment(64, 32, 32, generator=torch.Generator().manual_seed(3))
    by_index = apply_trivial_augment(images, op, magnitude)
    monkeypatch.setattr(gpu_aug, "MASKED_DEVICES", ("cpu", "cuda"))  # every op on every image, then selected
    assert torch.equal(apply_trivial_augment(images, op, magnitude), by_index)


def test_random_erasing_erases_each_sample_independently_like_torchvision():
    n = 4000
    ones = torch.ones(n, 3, 32, 32)
    erased = random_erasing(ones, p=0.5, generator=torch.Generator().manual_seed(2)) == 0  # (n, 3, 32, 32)
    assert (erased.all(dim=1) == erased.any(dim=1)).all()  # all channels of a pixel together
    fraction = erased[:, 0].float().mean(dim=(1, 2))  # (n,)
    hit = fraction > 0
    assert 0.45 < float(hit.float().mean()) < 0.55  # p = 0.5, drawn per sample
    # rectangles: the erased pixels fill their bounding box
    for img in erased[hit][:50, 0]:
        rows, cols = img.any(dim=1).nonzero(), img.any(dim=0).nonzero()
        assert img.sum() == len(rows) * len(cols)
    # the erased area matches torchvision's RandomErasing in distribution (same area, ratio and retries)
    torch.manual_seed(5)
    reference = v2.RandomErasing(p=1.0, value=0)
    ref_fraction = torch.stack(
        [(reference(torch.ones(3, 32, 32))[0] == 0).float().mean() for _ in range(2000)]
    )
    mine = fraction[hit]
    assert abs(float(mine.mean()) - float(ref_fraction.mean())) < 0.01
    assert abs(float(mine.std()) - float(ref_fraction.std())) < 0.01
    for q in (0.1, 0.5, 0.9):
        assert abs(float(mine.quantile(q)) - float(ref_fraction.quantile(q))) < 0.02


def test_random_crop_shifts_each_sample_by_its_own_offset_with_reflection():
    images = _images(64, seed=6)
    out = random_crop(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images.float(), (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for i in range(64):  # each output is one of the 81 windows of its reflect-padded image
        match = [
            (y, x)
            for y in range(9)
            for x in range(9)
            if torch.equal(padded[i, :, y : y + 32, x : x + 32], out[i].float())
        ]
        assert match, f"image {i} is not a crop of its padded image"
        offsets.add(match[0])
    assert len(offsets) > 20


def test_mixup_cutmix_on_device_keeps_targets_summing_to_one():
    augment = DeviceAugment(SEED_AUG, CIFAR10_MEAN, CIFAR10_STD, num_classes=10)
    torch.manual_seed(0)
    for _ in range(6):  # both MixUp and CutMix get chosen
        x, target = augment(_images(32), torch.randint(0, 10, (32,)))
        assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
        assert target.shape == (32, 10)
        torch.testing.assert_close(target.sum(dim=1), torch.ones(32))
        assert (target >= 0).all()


def test_without_augmentation_the_device_path_only_normalises():
    augment = DeviceAugment({"policy": "none"}, CIFAR10_MEAN, CIFAR10_STD, num_classes=10)
    images, labels = _images(8), torch.arange(8)
    x, y = augment(images, labels)
    expected = torch.stack([eval_transform(CIFAR10_MEAN, CIFAR10_STD)(img) for img in images])
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, labels)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["aug.policy=randaugment"],
            "aug.policy=randaugment has no batched version for data.device_aug=true",
        ),
        (["data.repeated_aug=3"], "data.repeated_aug=3 has no GPU data path"),
    ],
)
def test_policies_and_samplers_without_a_batched_version_are_refused_before_any_work(
    tmp_path: Path, overrides: list[str], line: str
):
    run_dir = tmp_path / "run"
    args = [
        "experiment=smoke",
        "data=synthetic",
        "data.device_aug=true",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    result = train_cli(args)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"error: {line}"), result.stderr
    assert not run_dir.exists()  # refused by the pre-flight, before Hydra makes the run folder


def test_device_batches_cover_the_data_once_per_epoch_and_reshuffle():
    images, labels = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100)
    batches = DeviceBatches(images, labels, batch_size=16, seed=0)
    assert len(batches) == 6  # drop_last
    batches.sampler.set_epoch(0)
    first = torch.cat([y for _, y in batches])
    assert len(first) == 96 and len(set(first.tolist())) == 96
    batches.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in batches]))
    ranks = [
        torch.cat([y for _, y in DeviceBatches(images, labels, 10, seed=0, rank=r, world_size=2)])
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 50 and not set(ranks[0].tolist()) & set(ranks[1].tolist())


def test_training_with_device_aug_runs_through_lightning(tmp_path):
    # the GPU data path is on by default on CUDA only (tests/test_device_aug_default.py); here it is forced on
    assert compose_config([], tmp_path).data.device_aug == "auto"
    cfg = compose_config(
        [
            *SYNTHETIC_SMALL,
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
            "trainer.max_epochs=1",
            "scheduler.warmup_epochs=0",
            "data.device_aug=true",
            "trainer.log_every_n_steps=1",
        ],
        tmp_path,
    )
    metrics = train(
        cfg
    )  # the network would refuse the uint8 batches if they were not augmented on the device
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["compile"] is False
    with open(tmp_path / "csv" / "metrics.csv") as f:
        steps = [row for row in csv.DictReader(f) if row.get("train/loss_step")]
    assert len(steps) == (10 * 40 - 100) // 32  # one epoch of full batches of the training split
