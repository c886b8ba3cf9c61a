"""Data faults stop with one line that says what is wrong and how to fix it: no dataset and no network, an
unreadable file in an image folder (or, with data.skip_bad=true, a count of those left out), a wrong layout,
classes that differ between train and test, an archive that is not the one its checksum names."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import urllib.error
from pathlib import Path

import pytest

from conftest import QUIET, TINY_MODEL, compose_config, write_archive, write_image_folder
from faults_support import FAST_RUN, error_lines, train_cli
from vit_cifar.config.entry import run_cli
from vit_cifar.config.schema import validate_config
from vit_cifar.data import CIFARDataModule
from vit_cifar.errors import ConfigError, DataError
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)


def spoil(folder: Path) -> list[str]:
    """A truncated JPEG and a text file named like an image, in class folders."""
    jpeg = folder / "train" / "dog" / "002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    (folder / "test" / "cat" / "notes.png").write_text("not an image")
    return ["test/cat/notes.png", "train/dog/002.jpg"]


def folder_args(root: Path, cache: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.source=folder",
        "data.num_classes=3",
        "data.val_size=6",
        "data.batch_size=8",
        f"data.cache_dir={cache}",
    ]


def test_unreadable_image_is_reported_with_its_path(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images")
    spoil(images)
    run = tmp_path / "run"
    result = train_cli([*FAST_RUN, *folder_args(images, tmp_path / "cache"), f"hydra.run.dir={run}"])
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.startswith(f"error: cannot decode image {images}/test/cat/notes.png (UnidentifiedImageError")
    assert line.endswith(
        "remove or replace the file, or set data.skip_bad=true to leave out unreadable files"
    )
    assert "Traceback" not in result.stderr
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    assert not (tmp_path / "cache").exists()  # nothing half-decoded was cached


def test_skip_bad_leaves_out_and_counts_unreadable_files(tmp_path: Path, caplog) -> None:
    images = write_image_folder(tmp_path / "images")
    bad = spoil(images)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        metrics = train(
            compose_config(
                [*FAST_RUN, *folder_args(images, cache), "data.skip_bad=true", "debug=fdr"], tmp_path / "run"
            )
        )
    assert metrics["skipped_files"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_files"] == 2
    assert f"skipped 2 unreadable files in {images} (data.skip_bad=true), e.g. {bad[0]}" in caplog.text

    # A cache that left files out is not used without skip_bad: the same folder still fails.
    strict = CIFARDataModule(
        root=str(images), source="folder", num_classes=3, cache_dir=str(cache), val_size=6
    )
    with pytest.raises(DataError, match=f"cannot decode image {images}/{bad[0]}"):
        strict.setup("fit")


def test_wrong_layout_and_differing_classes(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images")
    shutil.rmtree(images / "test" / "frog")
    with pytest.raises(
        DataError, match=r"train and test classes differ in .*: only in train \['frog'\], only in test \[\]"
    ):
        CIFARDataModule(root=str(images), source="folder", num_classes=3, cache_dir=None, val_size=6).setup(
            "fit"
        )
    shutil.rmtree(images / "test")
    with pytest.raises(
        DataError, match="is not an image folder: expected a folder with train/<class>/\\* and test"
    ):
        CIFARDataModule(root=str(images), source="folder", num_classes=3, cache_dir=None).setup("fit")


def test_archive_checksum(tmp_path: Path) -> None:
    archive = write_archive(write_image_folder(tmp_path / "images"), tmp_path / "images.tar.gz")
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    module = CIFARDataModule(root=str(archive), num_classes=3, cache_dir=None, val_size=6, sha256=good)
    module.setup("fit")
    assert len(module.train_set) == 30

    wrong = "0" * 64
    checked = CIFARDataModule(root=str(archive), num_classes=3, cache_dir=None, val_size=6, sha256=wrong)
    with pytest.raises(DataError) as err:
        checked.setup("fit")
    assert str(err.value) == (
        f"archive {archive} has SHA-256 {good}, not data.sha256={wrong}: it is incomplete or another file; "
        "download it again, or correct data.sha256"
    )
    cfg = compose_config(["data=synthetic", f"data.sha256={good}"], tmp_path / "out")
    with pytest.raises(
        ConfigError, match=r"^data.sha256 checks an image-folder archive, but data.root=.* is not"
    ):
        validate_config(cfg)


def test_no_dataset_and_no_network(tmp_path: Path, monkeypatch, capsys) -> None:
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    empty = tmp_path / "data"
    cfg = compose_config(["trainer=cpu", *TINY_MODEL, *QUIET, f"data.root={empty}"], tmp_path / "run")
    with pytest.raises(SystemExit) as stop:
        run_cli(train, cfg)
    assert stop.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: cifar10 is not in {empty} and could not be downloaded (<urlopen error [Errno -3] Temporary "
        "failure in name resolution>): point data.root at a local copy: a folder holding "
        "cifar-10-batches-py, an image-folder tree train/<class>/*, test/<class>/*, or a .tar/.tar.gz of one "
        "(e.g. data.root=/path/to/cifar10-jpeg.tar.gz)"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_oversized_archive_member_is_refused_unread(tmp_path: Path, monkeypatch) -> None:
    """Memory stays bounded whatever an archive holds: a member larger than the limit for one image file is
    reported by name (or skipped with data.skip_bad) from its header's size, before any of it is read."""
    from vit_cifar.data import sources

    tree = write_image_folder(tmp_path / "images")
    big = tree / "train" / "cat" / "huge.png"
    big.write_bytes(b"\0" * 5000)
    archive = write_archive(tree, tmp_path / "images.tar.gz")
    monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 4096)
    reads = []
    real_extract = sources.tarfile.TarFile.extractfile

    def watched(self, member):
        reads.append(getattr(member, "name", member))
        return real_extract(self, member)

    monkeypatch.setattr(sources.tarfile.TarFile, "extractfile", watched)
    with pytest.raises(
        DataError, match=r"train/cat/huge.png is 5,000 bytes, over the 4,096-byte limit for one"
    ):
        sources.load_image_folder(archive, 32, None, skip_bad=False)
    assert not any(str(name).endswith("huge.png") for name in reads)
    arrays = sources.load_image_folder(archive, 32, None, skip_bad=True)
    assert arrays.skipped == ["images/train/cat/huge.png"]


def test_half_an_image_folder_says_what_is_missing(tmp_path: Path) -> None:
    tree = write_image_folder(tmp_path / "images")
    shutil.rmtree(tree / "test")
    with pytest.raises(DataError, match=r"has train/ but no test/: an image folder needs both"):
        CIFARDataModule(root=str(tree), cache_dir=None)
