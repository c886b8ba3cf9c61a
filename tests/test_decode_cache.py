"""A decode cache that cannot be read, or does not hold what the data needs, is rebuilt from the data with one
log line, never trusted and never a traceback (issue 22)."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image_folder
from vit_cifar.data.sources import load_image_folder


def _truncated(cache: Path) -> None:  # an interrupted copy, a full disk
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def _other_npz(cache: Path) -> None:  # a valid .npz of something else
    np.savez(cache.with_suffix(".tmp.npz"), weights=np.zeros(3))
    cache.with_suffix(".tmp.npz").replace(cache)


def _other_size(cache: Path) -> None:  # the right keys, images of another size
    with np.load(cache) as z:
        arrays = dict(z)
    arrays["train_x"] = arrays["train_x"][:, :16, :16]
    np.savez(cache.with_suffix(".tmp.npz"), **arrays)
    cache.with_suffix(".tmp.npz").replace(cache)


def _labels_out_of_range(cache: Path) -> None:
    with np.load(cache) as z:
        arrays = dict(z)
    arrays["test_y"] = arrays["test_y"] + 7
    np.savez(cache.with_suffix(".tmp.npz"), **arrays)
    cache.with_suffix(".tmp.npz").replace(cache)


def _corrupt_member(cache: Path) -> None:  # a zip whose directory is whole but whose data is not
    data = bytearray(cache.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("train_x.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[start : start + 64] = b"\xff" * 64
    cache.write_bytes(bytes(data))


DAMAGES = {
    "truncated": _truncated,
    "empty": lambda cache: cache.write_bytes(b""),
    "not a zip": lambda cache: cache.write_bytes(b"not an archive at all\n" * 10),
    "another npz": _other_npz,
    "another image size": _other_size,
    "labels out of range": _labels_out_of_range,
    "a damaged member": _corrupt_member,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_cache_is_rebuilt_from_the_data_with_one_log_line(tmp_path, caplog, damage):
    images, cache_dir = write_image_folder(tmp_path / "images"), tmp_path / "cache"
    first = load_image_folder(images, 32, cache_dir)
    [cache] = cache_dir.glob("*.npz")
    damage(cache)
    with caplog.at_level(logging.WARNING, logger="vit_cifar.data.sources"):
        again = load_image_folder(images, 32, cache_dir)
    [line] = [r.getMessage() for r in caplog.records if r.name == "vit_cifar.data.sources"]
    assert line.startswith(f"decode cache {cache} is unusable (") and "\n" not in line
    assert line.endswith(f"decoding {images} again to rebuild it")
    for split in ("train", "test"):
        assert np.array_equal(getattr(again, f"{split}_x"), getattr(first, f"{split}_x"))
        assert np.array_equal(getattr(again, f"{split}_y"), getattr(first, f"{split}_y"))
    assert again.classes == first.classes
    assert [p.name for p in cache_dir.iterdir()] == [cache.name]  # rebuilt in place, no temporary left
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vit_cifar.data.sources"):
        load_image_folder(images, 32, cache_dir)  # the rebuilt cache is read as it is
    assert not caplog.records


@pytest.mark.e2e
def test_a_run_after_the_cache_was_truncated_trains_as_the_first(tmp_path: Path, monkeypatch):
    from faults_support import train_cli

    images, cache_dir = write_image_folder(tmp_path / "images"), tmp_path / "cache"
    monkeypatch.setenv("VIT_CIFAR_CACHE", str(cache_dir))  # the runs' cache (faults_support.cli_env)
    args = [
        f"data.root={images}",
        "data.num_classes=3",
        "data.val_size=6",
        "data.batch_size=8",
        "model.embed_dim=16",
        "model.depth=1",
        "model.num_heads=2",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "callbacks.progress_bar=null",
        "data.num_workers=0",
        "test=false",
    ]
    first = train_cli([*args, f"hydra.run.dir={tmp_path / 'run1'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    [cache] = cache_dir.glob("*.npz")
    _truncated(cache)
    second = train_cli([*args, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    assert f"decode cache {cache} is unusable" in second.stdout + second.stderr
    with np.load(cache) as z:
        assert z["train_x"].shape[1:] == (32, 32, 3)


def test_a_cache_that_cannot_be_written_loses_nothing(tmp_path, caplog):
    """A full disk, a read-only cache or a file in the way: the decoded data is used, and one log line says so."""
    images, in_the_way = write_image_folder(tmp_path / "images"), tmp_path / "cache"
    in_the_way.write_text("a file where the cache folder should be\n")
    with caplog.at_level(logging.WARNING, logger="vit_cifar.data.sources"):
        arrays = load_image_folder(images, 32, in_the_way)
    assert arrays.train_x.shape == (36, 32, 32, 3) and arrays.classes == ["cat", "dog", "frog"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "vit_cifar.data.sources"]
    assert line.startswith(f"cannot write decode cache {in_the_way}/") and "\n" not in line
    assert in_the_way.read_text() == "a file where the cache folder should be\n"
