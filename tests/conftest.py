"""Shared fixtures: composed configs, a tiny model, generated image folders, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from vit_cifar import devices
from vit_cifar.config import entry
from vit_cifar.devices import DeviceSpec

ROOT = Path(__file__).resolve().parents[1]
# The JPEG copy of CIFAR-10 for the tests that use real data (they skip without it): $VIT_CIFAR_DATA when it is
# that archive, else the one beside the checkout.
JPEG_ARCHIVE = (
    Path(os.environ["VIT_CIFAR_DATA"])
    if os.environ.get("VIT_CIFAR_DATA", "").endswith(".tar.gz")
    else ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
)

# A ViT small enough that a CPU step takes milliseconds; everything else is the real pipeline.
TINY_MODEL = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.drop_rate=0.0"]
# Quiet, single-process runs for tests.
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "data.num_workers=0"]
SYNTHETIC_SMALL = [
    "data=synthetic",
    "data.synthetic.train_per_class=40",
    "data.synthetic.test_per_class=10",
    "data.val_size=100",
    "data.batch_size=32",
]


# The seed's Kaggle GPU, as the pre-flight of a GPU trainer sees it on a machine that has one (NVML's answer).
T4 = DeviceSpec.cuda(7, 5, memory=15 * 2**30)


def as_on_a_t4(monkeypatch) -> None:
    """Pre-flight a ``trainer=gpu`` config as a machine with a T4 would: what is checked is the config, while this
    machine (no GPU) would refuse any GPU trainer in one line."""
    here = devices.local_device
    monkeypatch.setattr(
        devices, "local_device", lambda acc="auto": T4 if acc in ("gpu", "cuda") else here(acc)
    )


@pytest.fixture(autouse=True)
def _default_data_root(monkeypatch):
    """Every test sees the configs' own default data root, whatever the developer's $VIT_CIFAR_DATA says."""
    monkeypatch.delenv("VIT_CIFAR_DATA", raising=False)


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The real config with overrides, as Hydra would build it, with outputs in ``output_dir``."""
    return entry.compose_config(overrides, output_dir, config_name)


def run_module(
    module: str, args: list[str], cwd: Path = ROOT, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in a subprocess, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VIT_CIFAR_CACHE": str(ROOT / ".cache" / "vit_cifar")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_image_folder(
    root: Path, classes=("cat", "dog", "frog"), per_split=(12, 6), size=32, seed=0
) -> Path:
    """A small train/<class>/, test/<class>/ tree of PNG and JPEG files, each class its own colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_split, strict=True):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3)) + 60 * c
                img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(img).save(folder / f"{i:03d}.{ext}")
    return root


def write_archive(tree: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"images/{split}")
    return archive


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def jpeg_archive() -> Path:
    if not JPEG_ARCHIVE.is_file():
        pytest.skip(f"{JPEG_ARCHIVE} is not here")
    return JPEG_ARCHIVE


@pytest.fixture(scope="session")
def attention_ckpt(tmp_path_factory) -> Path:
    """A tiny ViT (patch 8: a 4x4 grid) trained for one epoch on synthetic images by the real ``train``."""
    from vit_cifar.training.run import train

    out = tmp_path_factory.mktemp("attention_run")
    overrides = [
        *TINY_MODEL,
        *QUIET,
        *SYNTHETIC_SMALL,
        "model.patch_size=8",
        "aug=none",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "~logger",
        "callbacks.lr_monitor=null",
        "test=false",
    ]
    train(compose_config(overrides, out))
    return next((out / "checkpoints").glob("step*.ckpt"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny ViT trained once per session for 2 epochs on synthetic data (about 50% accurate), through the
    real train(); its run folder holds checkpoints/last.ckpt (after epoch 2) and the log csv/metrics.csv."""
    from vit_cifar.training.run import train

    out = tmp_path_factory.mktemp("tiny_run")
    short_run = [
        "aug=none",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "scheduler.warmup_epochs=1",
        "trainer.log_every_n_steps=1",
        "logger.tensorboard=null",
        "callbacks.model_checkpoint.monitor=null",
    ]
    train(compose_config([*TINY_MODEL, *QUIET, *SYNTHETIC_SMALL, *short_run], out))
    return out
