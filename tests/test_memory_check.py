"""Sizes that cannot fit are refused before anything is allocated: the image size, the model's shape and the
batch sizes against the device's memory, with the memory they would take in the one line (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import compose_config
from faults_support import train_cli
from vit_cifar.config import schema
from vit_cifar.config.entry import preflight
from vit_cifar.errors import ConfigError
from vit_cifar.training.run import check_train_command

# Each needs far more than any machine has (terabytes and more).
TOO_LARGE = [
    ["data.image_size=100000"],
    ["model.depth=1000000"],
    ["model.embed_dim=3000000", "model.num_heads=3"],
    ["data.batch_size=1000000000"],
    ["data.eval_batch_size=1000000000000"],
    ["model=resnet18", "data.batch_size=100000000"],
    ["model.patch_size=1", "data.image_size=4096"],
]


@pytest.mark.parametrize("overrides", TOO_LARGE, ids=" ".join)
def test_sizes_that_cannot_fit_stop_the_preflight_with_the_memory_they_need(capsys, overrides):
    with pytest.raises(SystemExit) as stop:
        preflight("train", overrides, check_train_command)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.image_size=")
    assert " need at least " in err and " GiB, more than the " in err and "GiB of memory on" in err


def test_the_estimate_is_held_against_the_memory_the_device_has(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(schema, "_device_memory", lambda device: (8 * 2**30, "memory on this machine"))
    schema.validate_config(compose_config(["data.batch_size=256"], tmp_path))  # ViT-Tiny: ~0.5 GiB
    with pytest.raises(
        ConfigError, match=r"data\.batch_size=8192 .* need at least [\d.]+ GiB, more than the 8\.0"
    ):
        schema.validate_config(compose_config(["data.batch_size=8192"], tmp_path))  # ~55 GiB
    monkeypatch.setattr(schema, "_device_memory", lambda device: (None, ""))  # unknown: not checked
    schema.validate_config(compose_config(["data.batch_size=8192"], tmp_path))


@pytest.mark.e2e
def test_a_huge_image_size_is_refused_before_any_run_folder(tmp_path: Path):
    result = train_cli(["data.image_size=100000"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: data.image_size=100000, data.batch_size=128") and "GiB" in line
    assert list(tmp_path.iterdir()) == []


def test_an_image_size_the_data_does_not_have_is_refused(tmp_path: Path, capsys):
    """torchvision's CIFAR is 32x32 and is not resized; an image folder is resized on decode."""
    from conftest import write_image_folder

    torchvision_folder = tmp_path / "cifar"  # what auto takes for torchvision's folder
    torchvision_folder.mkdir()
    with pytest.raises(SystemExit) as stop:
        preflight("train", [f"data.root={torchvision_folder}", "data.image_size=64"], check_train_command)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "error: data.image_size=64 but torchvision's cifar10 images are 32x32 and are not resized"
    )
    images = write_image_folder(tmp_path / "images", size=16)
    schema.validate_config(compose_config([f"data.root={images}", "data.image_size=64"], tmp_path))
