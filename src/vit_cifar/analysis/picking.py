"""Which images ``python -m vit_cifar.visualize`` explains, by section: the user's files, or test images drawn
at random with a seed, and misclassified ones from the same draw."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_cifar.analysis.evaluation import evaluation_data
from vit_cifar.checkpoints.loading import LoadedClassifier
from vit_cifar.data.sources import collect_image_files, decode_image
from vit_cifar.errors import COUNT, ConfigError, DataError, check, first_line

Normalise = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> the network's normalised input


@dataclass
class Picked:
    """Images to explain, uint8 (K, 3, S, S), with where each came from and its true label when known."""

    images: torch.Tensor
    names: list[str]  # file stems for the figures
    sources: list[str]  # "test image 1234" or the file path
    labels: list[int | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable inputs


@dataclass
class Group:
    """A section of the index: images explained together, with an overview figure of their rollouts."""

    title: str
    note: str
    overview: str  # file name of the overview figure
    picked: Picked


def _count(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    check(key, value, COUNT)
    return value


def input_files(inputs) -> list[Path]:
    """The image files named by ``inputs`` (files, folders searched recursively), in a stable order; every
    name must give some (what to explain is chosen by the user, so a wrong name is a setting to fix)."""
    raw = OmegaConf.to_container(inputs) if isinstance(inputs, ListConfig) else inputs
    files, problems = collect_image_files(raw)
    if problems:
        name, why = problems[0]
        raise ConfigError(f"inputs: {name}: {why}: pass image files or folders of them")
    return files


def pick_inputs(inputs, limit: int, image_size: int) -> Picked:
    """The first ``limit`` images of ``inputs``, decoded and resized to the model's input size."""
    files = input_files(inputs)
    if len(files) > limit:
        print(f"inputs: explaining the first {limit} of {len(files)} images (raise num_images for more)")
        files = files[:limit]
    # The data sources' decoder: RGB, resized to the model's input. As predict does, an unreadable file is
    # skipped and reported, and the others are still explained.
    arrays, readable, skipped = [], [], []
    for f in files:
        try:
            arrays.append(decode_image(f.read_bytes(), image_size, str(f)))  # (S, S, 3) uint8
            readable.append(f)
        except (DataError, OSError) as err:
            skipped.append((str(f), first_line(err)))
    if not readable:
        raise DataError(
            f"none of the {len(files)} inputs could be read (first: {skipped[0][0]}: {skipped[0][1]}): "
            "pass image files (png, jpg, ...)"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (K, 3, S, S)
    names = [
        f"input_{i + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', f.stem)[:40]}" for i, f in enumerate(readable)
    ]
    return Picked(images, names, [str(f) for f in readable], [None] * len(readable), skipped)


def load_test_set(
    cfg: DictConfig, loaded: LoadedClassifier, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The test images (uint8 (N, 3, S, S)) and labels of the data group, checked against the checkpoint."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    datamodule, _ = evaluation_data(data_cfg, loaded, int(cfg.data.get("eval_batch_size", 512)))
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise DataError(
            f"the test images are {images.shape[-1]}x{images.shape[-2]} but the checkpoint's model takes "
            f"{image_size}x{image_size}: use data of that size"
        )
    return images, labels, datamodule.description


@torch.inference_mode()
def find_misclassified(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: np.ndarray,
    wanted: int,
    normalise: Normalise,
    device: torch.device,
    max_batch: int,
) -> list[int]:
    """The first ``wanted`` misclassified images in ``order`` (a seeded permutation: a random sample of the
    errors), through the fused forward; batches grow so that a good model is not run on the whole test set."""
    found: list[int] = []
    start, batch = 0, 64
    while len(found) < wanted and start < len(order):
        idx = order[start : start + batch]
        preds = net(normalise(images[idx]).to(device)).argmax(dim=1).cpu()
        found += [int(i) for i, p in zip(idx, preds, strict=True) if p != labels[i]]
        start, batch = start + batch, min(batch * 2, max_batch)
    return found[:wanted]


def _picked_from_test(images: torch.Tensor, labels: torch.Tensor, indices: list[int], prefix: str) -> Picked:
    return Picked(
        images=images[indices],
        names=[f"{prefix}_{k + 1:02d}_test{i}" for k, i in enumerate(indices)],
        sources=[f"test image {i}" for i in indices],
        labels=[int(labels[i]) for i in indices],
    )


def pick_groups(
    cfg: DictConfig, loaded: LoadedClassifier, image_size: int, normalise: Normalise, device: torch.device
) -> tuple[list[Group], str]:
    """The images to explain, by section, and a line on where they come from."""
    num_images, num_wrong, seed = (_count(cfg, key) for key in ("num_images", "num_misclassified", "seed"))
    if cfg.get("inputs"):
        if num_images == 0:
            raise ConfigError("num_images=0 leaves none of the inputs to explain: set it to 1 or more")
        picked = pick_inputs(cfg.inputs, num_images, image_size)
        note = f"{len(picked.names)} images given by inputs, titled with their paths."
        if picked.skipped:
            note += f" Skipped as unreadable: {', '.join(path for path, _ in picked.skipped)}."
        return [Group("Your images", note, "rollout_inputs.png", picked)], note
    if num_images + num_wrong == 0:
        raise ConfigError("num_images=0 and num_misclassified=0 leave nothing to explain: set one above 0")
    images, labels, description = load_test_set(cfg, loaded, image_size)
    # One seeded permutation serves both sections: its first images, and its first misclassified images.
    order = np.random.default_rng(seed).permutation(len(labels))
    groups = []
    if num_images:
        chosen = [int(i) for i in order[:num_images]]
        picked = _picked_from_test(images, labels, chosen, "sample")
        note = f"{len(chosen)} test images drawn at random (seed {cfg.seed})."
        groups.append(Group("Test images", note, "rollout_samples.png", picked))
    if num_wrong:
        # Drawn after the samples in the same permutation, so that no image appears in both sections.
        wrong = find_misclassified(
            loaded.net,
            images,
            labels,
            order[num_images:],
            num_wrong,
            normalise,
            device,
            int(cfg.data.get("eval_batch_size", 512)),
        )
        note = (
            f"{len(wrong)} misclassified test images drawn at random (seed {cfg.seed}), titled true -> "
            "predicted."
            if wrong
            else f"No test image is misclassified (of {len(labels)})."
        )
        picked = _picked_from_test(images, labels, wrong, "misclassified")
        groups.append(Group("Misclassified test images", note, "rollout_misclassified.png", picked))
    return groups, f"{description}, {len(labels)} test images"
