"""The augmentation pipelines, built from torchvision.transforms.v2 and the ``aug`` config group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from vit_cifar.errors import COUNT, OPEN_PROBABILITY, PROBABILITY, Choice, Number

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
POLICIES = ("trivialaugment", "randaugment", "autoaugment", "none")  # the values aug.policy takes
# The values each key of the aug group takes (config.schema checks the group with them, before any work).
RULES = {
    "policy": Choice(POLICIES, optional=True),
    "random_crop_padding": COUNT,
    "hflip_p": PROBABILITY,
    "erasing_p": PROBABILITY,
    "mix_prob": PROBABILITY,
    "mixup_alpha": Number(low=0, hint="0 switches it off"),
    "cutmix_alpha": Number(low=0, hint="0 switches it off"),
    "label_smoothing": OPEN_PROBABILITY,
}


def train_transform(aug: dict, mean: Sequence[float], std: Sequence[float], image_size: int) -> v2.Compose:
    """Per-image training pipeline on a uint8 (3, H, W) tensor: geometric and colour augmentation on uint8,
    then scaling and normalisation, then RandomErasing (which fills with 0, the mean, after normalising).
    The values are config.schema's, checked against ``RULES``."""
    ops: list[v2.Transform] = []
    if aug.get("random_crop_padding"):
        ops.append(v2.RandomCrop(image_size, padding=aug["random_crop_padding"], padding_mode="reflect"))
    if aug.get("hflip_p"):
        ops.append(v2.RandomHorizontalFlip(p=aug["hflip_p"]))
    policy = aug.get("policy")
    if policy == "trivialaugment":
        ops.append(v2.TrivialAugmentWide())
    elif policy == "randaugment":
        ops.append(v2.RandAugment())
    elif policy == "autoaugment":
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if aug.get("erasing_p"):
        ops.append(v2.RandomErasing(p=aug["erasing_p"], value=0))
    return v2.Compose(ops)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Evaluation: scaling and normalisation only."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def batch_mix(aug: dict, num_classes: int) -> v2.Transform | None:
    """Per-batch MixUp or CutMix (one of them, chosen at random, on each batch), or None when both are off.
    Targets become class probabilities that sum to 1; label smoothing is applied later, in the loss."""
    mixes = []
    if aug.get("mixup_alpha"):
        mixes.append(v2.MixUp(alpha=float(aug["mixup_alpha"]), num_classes=num_classes))
    if aug.get("cutmix_alpha"):
        mixes.append(v2.CutMix(alpha=float(aug["cutmix_alpha"]), num_classes=num_classes))
    if not mixes:
        return None
    mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
    mix_prob = aug.get("mix_prob", 1.0)
    return mix if mix_prob == 1.0 else v2.RandomApply([mix], p=mix_prob)
