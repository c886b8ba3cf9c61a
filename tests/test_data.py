import urllib.error

import numpy as np
import pytest
import torch

from conftest import write_archive, write_image_folder
from vit_cifar.data import CIFARDataModule, balanced_subset, sources, stratified_split, transforms
from vit_cifar.data.transforms import batch_mix, train_transform
from vit_cifar.errors import ConfigError, DataError, check

SEED_AUG = {
    "policy": "trivialaugment",
    "erasing_p": 0.25,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
    "label_smoothing": 0.1,
}


def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.repeat(np.arange(10), 500)
    train, val = stratified_split(labels, 500, seed=3)
    assert len(val) == 500 and len(train) == 4500
    assert np.intersect1d(train, val).size == 0
    assert np.bincount(labels[val]).tolist() == [50] * 10
    assert np.array_equal(val, stratified_split(labels, 500, seed=3)[1])
    assert not np.array_equal(val, stratified_split(labels, 500, seed=4)[1])
    train, val = stratified_split(labels, 0, seed=3)
    assert len(train) == 5000 and len(val) == 0


def test_split_of_unbalanced_classes_keeps_their_proportions():
    labels = np.array([0] * 800 + [1] * 200)
    _, val = stratified_split(labels, 100, seed=0)
    assert np.bincount(labels[val]).tolist() == [80, 20]
    with pytest.raises(ConfigError, match="data.val_size=1000"):
        stratified_split(labels, 1000, seed=0)


def test_subset_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    idx = balanced_subset(labels, 55, seed=1, key="data.train_subset")
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.sum() == 55 and set(counts.tolist()) == {5, 6}
    assert np.array_equal(idx, balanced_subset(labels, 55, seed=1, key="data.train_subset"))
    with pytest.raises(ConfigError, match="data.train_subset=2000"):
        balanced_subset(labels, 2000, seed=1, key="data.train_subset")


def test_synthetic_source_is_class_dependent():
    arrays = sources.make_synthetic(4, 20, 5, 32, noise=10.0, seed=0)
    assert arrays.train_x.shape == (80, 32, 32, 3) and arrays.train_x.dtype == np.uint8
    assert arrays.test_y.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    means = [arrays.train_x[arrays.train_y == c].mean(axis=0) for c in range(4)]
    assert np.abs(means[0] - means[1]).mean() > 20  # classes look different...
    same = arrays.train_x[arrays.train_y == 0].astype(float)
    assert np.abs(same - means[0]).mean() < 15  # ...and alike within a class


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_tree_and_archive_decode_to_the_same_arrays(tmp_path, image_folder, as_archive):
    root = write_archive(image_folder, tmp_path / "images.tar.gz") if as_archive else image_folder
    arrays = sources.load_image_folder(root, 32, cache_dir=tmp_path / "cache")
    assert arrays.classes == ["cat", "dog", "frog"]
    assert arrays.train_x.shape == (36, 32, 32, 3) and arrays.test_x.shape == (18, 32, 32, 3)
    assert np.bincount(arrays.train_y).tolist() == [12, 12, 12]
    assert abs(arrays.train_x[arrays.train_y == 2].mean() - 120) < 5  # frog was drawn at grey level 120
    plain = sources.load_image_folder(image_folder, 32, cache_dir=None)
    assert np.array_equal(plain.train_x, arrays.train_x) and np.array_equal(plain.test_y, arrays.test_y)


def test_image_folder_is_decoded_once_then_read_from_the_cache(tmp_path, image_folder, monkeypatch):
    archive = write_archive(image_folder, tmp_path / "images.tar.gz")
    first = sources.load_image_folder(archive, 32, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(sources, "_read_folder", no_decoding)
    again = sources.load_image_folder(archive, 32, cache_dir=tmp_path / "cache")
    assert np.array_equal(first.train_x, again.train_x) and again.classes == first.classes


def test_other_image_sizes_and_modes_are_converted(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path / "big", classes=("a", "b"), per_split=(2, 1), size=64)
    Image.new("L", (40, 30), 200).save(root / "train" / "a" / "grey.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 128)).save(root / "test" / "b" / "alpha.png")
    arrays = sources.load_image_folder(root, 32, cache_dir=None)
    assert arrays.train_x.shape == (5, 32, 32, 3) and arrays.test_x.shape == (3, 32, 32, 3)


def test_folder_faults_give_clear_errors(tmp_path, image_folder):
    (image_folder / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*train/cat/broken.jpg"):
        sources.load_image_folder(image_folder, 32, cache_dir=None)

    other = write_image_folder(tmp_path / "other", classes=("cat", "dog"), per_split=(2, 2))
    (other / "test" / "dog").rename(other / "test" / "bird")
    with pytest.raises(
        DataError, match=r"train and test classes differ.*only in train \['dog'\].*\['bird'\]"
    ):
        sources.load_image_folder(other, 32, cache_dir=None)

    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="not an image folder: expected a folder with train/<class>"):
        sources.load_image_folder(flat, 32, cache_dir=None)

    truncated = tmp_path / "cut.tar.gz"
    clean = write_image_folder(tmp_path / "clean")
    data = write_archive(clean, tmp_path / "whole.tar.gz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read archive"):
        sources.load_image_folder(truncated, 32, cache_dir=None)


def test_missing_cifar_without_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    dm = CIFARDataModule(root=str(tmp_path / "nothing"), num_workers=0)
    assert dm.source == "torchvision"
    with pytest.raises(DataError, match=r"could not be downloaded .*name resolution.*data.root=.*tar.gz"):
        dm.prepare_data()
    with pytest.raises(DataError, match="data.download=false"):
        CIFARDataModule(root=str(tmp_path / "nothing"), download=False, num_workers=0).prepare_data()


def test_datamodule_splits_subsets_and_batches(tmp_path):
    dm = CIFARDataModule(
        source="synthetic",
        synthetic={"train_per_class": 30, "test_per_class": 10},
        val_size=50,
        train_subset=100,
        test_subset=40,
        batch_size=16,
        num_workers=0,
        cache_dir=None,
        aug=SEED_AUG,
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 50, 40)
    assert torch.bincount(dm.train_set.labels).tolist() == [10] * 10
    assert torch.bincount(dm.val_set.labels).tolist() == [5] * 10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
    val_x, _ = dm.val_set[0]
    raw = dm.val_set.images[0].float() / 255
    expected = (raw - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(3, 1, 1)
    assert torch.allclose(val_x, expected, atol=1e-6)  # evaluation: normalisation only


def test_mixed_targets_are_probabilities_that_sum_to_one():
    mix = batch_mix(SEED_AUG, num_classes=10)
    torch.manual_seed(0)
    for _ in range(20):  # both MixUp and CutMix get picked
        x, y = mix(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        assert y.shape == (8, 10)
        assert torch.allclose(y.sum(dim=1), torch.ones(8))
        assert (y >= 0).all()
    assert batch_mix({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, 10) is None


def test_mixing_happens_on_training_batches_only():
    class Stage:
        training = True

    dm = CIFARDataModule(source="synthetic", num_workers=0, cache_dir=None, aug=SEED_AUG)
    dm.trainer = Stage()
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert dm.on_after_batch_transfer(batch, 0)[1].shape == (4, 10)
    Stage.training = False
    assert dm.on_after_batch_transfer(batch, 0)[1].shape == (4,)


def test_seed_pipeline_and_bad_values():
    tf = train_transform(SEED_AUG, (0.5,) * 3, (0.25,) * 3, 32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["TrivialAugmentWide", "ToDtype", "Normalize", "RandomErasing"]
    out = tf(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    # bad values are the schema's, by the rules beside the transforms
    with pytest.raises(ConfigError, match=r"^aug.erasing_p=1.5 is out of range: use a number in \[0, 1\]$"):
        check("aug.erasing_p", 1.5, transforms.RULES["erasing_p"])
    with pytest.raises(
        ConfigError, match=r"^aug.mixup_alpha=-0.2 is out of range: use a number >= 0 \(0 switches it off\)$"
    ):
        check("aug.mixup_alpha", -0.2, transforms.RULES["mixup_alpha"])
