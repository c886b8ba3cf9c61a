"""The validation split, the subsets and the order of the evaluation sets: seeded, class by class."""

from __future__ import annotations

import numpy as np

from vit_cifar.errors import ConfigError


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
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
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
