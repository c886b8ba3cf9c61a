"""python -m vit_cifar.predict: any image mode and size, top-k, JSON/CSV, unreadable files skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import ROOT, compose_config, run_module
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.config.entry import CONFIG_DIR
from vit_cifar.errors import ConfigError
from vit_cifar.inference.engine import evaluation_datamodule, input_spec, predict_probs
from vit_cifar.predict import load_image, predict, predict_files, write_predictions

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """One file per mode and format, of odd sizes, plus a corrupt PNG and a text file."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(
        folder / "large.jpg", quality=90
    )
    rgba = np.dstack([rgb, np.full((48, 64), 255, np.uint8)])
    rgba[:, :32, 3] = 0  # the left half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8), mode="L").save(folder / "grey.jpg")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(folder / "grey16.png")  # 16-bit white
    (folder / "nested").mkdir()
    Image.fromarray(rgb[:10, :10]).save(folder / "nested" / "small.PNG")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    return folder


GOOD = ["grey.jpg", "grey16.png", "large.jpg", "nested/small.PNG", "palette.png", "rgb.png", "rgba.png"]


def test_every_mode_becomes_a_normal_rgb_image_of_the_training_size(images):
    for name in GOOD:
        x = load_image(images / name, 32)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8, name
    grey = load_image(images / "grey.jpg", 32)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert (
        int(load_image(images / "grey16.png", 32).min()) == 255
    )  # scaled to 8 bits, not clipped to black/white
    rgba = load_image(images / "rgba.png", 64)
    assert int(rgba[:, :, :20].min()) == 255  # transparency is composited over white


def test_a_large_16_bit_image_is_shrunk_before_any_full_size_copy(tmp_path):
    """A 16-bit PNG compresses to almost nothing whatever size it declares; the 8-bit conversion works on
    the resized image, so no full-size array is made (numpy's allocations are what tracemalloc sees)."""
    import tracemalloc

    ramp = np.tile(np.linspace(0, 60000, 3000).astype(np.uint16), (3000, 1))  # 3,000 x 3,000, to 60,000
    Image.fromarray(ramp).save(tmp_path / "big16.png")
    assert (tmp_path / "big16.png").stat().st_size < ramp.nbytes / 10
    tracemalloc.start()
    try:
        x = load_image(tmp_path / "big16.png", 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ramp.nbytes / 10  # a float64 copy of the whole image was 72 MB, four times the image
    assert x.shape == (3, 32, 32)
    assert int(x[0, 0, 0]) < 10 and 200 < int(x[0, 0, -1]) <= 255  # scaled by the whole image's top value


def test_folder_predictions_skip_the_corrupt_file_and_keep_the_rest(tiny_run, images):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    predictions, skipped = predict_files(ckpt, [str(images), str(images / "missing.png")], top_k=3)
    assert sorted(Path(path).relative_to(images).as_posix() for path, _ in predictions) == GOOD
    classes = load_classifier(ckpt).classes
    for _, top in predictions:
        probabilities = [v for _, v in top]
        assert len(top) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert all(c in classes for c, _ in top) and 0 < sum(probabilities) <= 1 + 1e-6
    skipped = dict(skipped)
    assert set(skipped) == {str(images / "corrupt.png"), str(images / "missing.png")}
    assert skipped[str(images / "missing.png")] == "no such file or folder"


def test_predict_preprocesses_like_the_evaluation(tiny_run, tmp_path):
    """A test image saved losslessly at its own size gets the probabilities the evaluation gives it."""
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    loaded = load_classifier(ckpt)
    data = compose_config(
        ["data=synthetic", "data.synthetic.test_per_class=10"], tmp_path, config_name="eval"
    ).data
    datamodule = evaluation_datamodule(dict(data), input_spec(loaded), batch_size=8)
    datamodule.setup("test")
    x, _ = next(iter(datamodule.test_dataloader()))
    expected, _ = predict_probs(loaded.net, [x[:4]], torch.device("cpu"))
    for i in range(4):
        Image.fromarray(datamodule.test_set.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    predictions, _ = predict_files(ckpt, [str(tmp_path / f"{i}.png") for i in range(4)], top_k=10)
    for i, (_, top) in enumerate(predictions):
        got = dict(top)
        assert [got[c] for c in loaded.classes] == pytest.approx(expected[i].tolist(), abs=1e-5)


def test_csv_and_json_outputs(tiny_run, images, tmp_path):
    predictions, skipped = predict_files(tiny_run / "checkpoints" / "last.ckpt", str(images), top_k=2)
    write_predictions(predictions, skipped, tmp_path / "p.csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 2 * len(GOOD) and {r["rank"] for r in rows} == {"1", "2"}
    first_path, first_top = predictions[0]
    assert (rows[0]["path"], rows[0]["class"]) == (first_path, first_top[0][0])
    assert float(rows[0]["probability"]) == pytest.approx(first_top[0][1], abs=1e-6)
    write_predictions(predictions, skipped, tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert len(saved["predictions"]) == len(GOOD) and saved["skipped"][0]["path"] == str(
        images / "corrupt.png"
    )
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp"))


def test_bad_options_are_refused(tiny_run, images, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    for overrides, message in [
        ([f"inputs={images}", f"output={tmp_path / 'p.txt'}"], "must end in .json or .csv"),
        ([f"inputs={images}", "top_k=0"], "^top_k=0 is out of range: use an integer >= 1$"),
        ([], "inputs=<image file, folder"),
        ([f"inputs={tmp_path}"], "holds no image files"),
    ]:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="predict", overrides=[f"ckpt_path={ckpt}", *overrides])
        with pytest.raises(ConfigError, match=message):
            predict(cfg)


def test_cli_reports_skipped_files_by_path_and_exits_non_zero(tiny_run, images, tmp_path):
    out = tmp_path / "predictions.json"
    before = sorted(ROOT.rglob("outputs/**/*")) + sorted(ROOT.iterdir())
    result = run_module(
        "vit_cifar.predict",
        [
            f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}",
            f"inputs=[{images / 'rgb.png'},{images / 'corrupt.png'}]",
            f"output={out}",
            "top_k=2",
            "tta=true",
        ],
    )
    assert result.returncode == 3, result.stderr
    assert f"skipped {images / 'corrupt.png'}: " in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 of 2 inputs skipped (unreadable, listed above); the other 1 were predicted"
    )
    assert result.stdout.startswith(f"{images / 'rgb.png'}: class_")
    saved = json.loads(out.read_text())
    assert [p["path"] for p in saved["predictions"]] == [str(images / "rgb.png")]
    assert sorted(ROOT.rglob("outputs/**/*")) + sorted(ROOT.iterdir()) == before, "no run folder is written"
