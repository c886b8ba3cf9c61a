"""python -m vit_cifar.evaluate and train=false: figures, metrics.json, report.md, clear errors."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conftest import QUIET, TINY_MODEL, compose_config, run_module, write_image_folder
from vit_cifar.analysis.evaluation import FIGURES, evaluate, read_history
from vit_cifar.analysis.report import weakest_classes
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.errors import CheckpointError, ConfigError
from vit_cifar.inference.engine import predict_probs
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

# The tiny run's data (see tests/conftest.py): 10 synthetic classes, 10 test images each.
EVAL_DATA = ["data=synthetic", "data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def run_evaluate(ckpt: Path, out: Path, *extra: str) -> dict:
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"output_dir={out}", *EVAL_DATA, *extra], out, config_name="eval"
    )
    return evaluate(cfg)


@pytest.fixture(scope="module")
def evaluation(tiny_run: Path, tmp_path_factory) -> tuple[dict, Path]:
    """The real command, as a user runs it: its metrics.json and output folder."""
    out = tmp_path_factory.mktemp("evaluation") / "evaluation"
    result = run_module(
        "vit_cifar.evaluate",
        [f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}", *EVAL_DATA],
    )
    assert result.returncode == 0, result.stderr
    assert "test_acc=" in result.stdout
    return json.loads((out / "metrics.json").read_text()), out


def test_every_figure_is_a_png_of_sensible_size(evaluation):
    _, out = evaluation
    for name in FIGURES:
        width, height = png_size(out / f"{name}.png")
        assert 400 <= width <= 3000 and 300 <= height <= 3000, (name, width, height)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.png" for n in FIGURES] + ["metrics.json", "report.md"]
    )


def test_metrics_json_is_consistent(evaluation, tiny_run):
    m, _ = evaluation
    assert m["test_images"] == 100 and m["correct"] + m["errors"] == 100
    assert m["test_acc"] == pytest.approx(m["correct"] / 100) and m["error_rate"] == pytest.approx(
        m["errors"] / 100
    )
    cm = torch.tensor(m["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 100 and int(cm.trace()) == m["correct"]
    for i, name in enumerate(m["classes"]):
        row = m["per_class"][name]
        assert (row["correct"], row["total"]) == (int(cm[i, i]), int(cm[i].sum())) == (row["correct"], 10)
    assert sum(p["count"] for p in m["top_confusions"]) <= m["errors"] and len(m["top_confusions"]) <= 5
    cal = m["calibration"]
    assert cal["ece_bins"] == 15 and 0 <= cal["ece"] <= 1 and cal["nll"] > 0
    # What the checkpoint and the run say about the result travels with it.
    assert m["checkpoint_after_epoch"] == 2 and m["train_seed"] == 42 and m["data"] == "synthetic (seed 0)"
    assert m["device"].startswith("cpu") and m["history_csv"] == str(
        tiny_run.resolve() / "csv" / "metrics.csv"
    )
    assert m["model"] == "VisionTransformer" and m["params"] > 0 and m["images_per_s"] > 0


def table_rows(markdown: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ") and not line.startswith("|---")
    ]


def test_report_tables_carry_the_numbers_of_metrics_json(evaluation):
    m, out = evaluation
    report = (out / "report.md").read_text()
    rows = table_rows(report)
    # The per-class table: | class | accuracy | correct / total |, the weakest classes in bold.
    per_class = {r[0].strip("*"): r for r in rows if len(r) == 3 and r[1].strip("*").endswith("%")}
    weak = weakest_classes(m["per_class"])
    assert 0 < len(weak) < 10
    for name, row in m["per_class"].items():
        cells = per_class[name]
        assert cells[1].strip("*") == f"{100 * row['accuracy']:.1f}%" and cells[2] == f"{row['correct']} / 10"
        assert cells[0].startswith("**") == (name in weak)
    assert per_class["Overall"] == ["**Overall**", f"**{100 * m['test_acc']:.2f}%**", f"{m['correct']} / 100"]
    # The top misclassification pairs, in order.
    pairs = [r for r in rows if len(r) == 3 and r[0] in m["classes"] and r[1] in m["classes"]]
    assert pairs == [[p["true"], p["predicted"], str(p["count"])] for p in m["top_confusions"]]
    # Calibration, overall and per class.
    cal = m["calibration"]
    assert [f"{100 * cal['ece']:.2f}%", f"{cal['nll']:.4f}"] in [r[:2] for r in rows]
    calibration_rows = {r[0]: r for r in rows if len(r) == 6 and r[0] in m["classes"]}
    for name, row in m["per_class"].items():
        assert calibration_rows[name][5] == f"{100 * row['ece']:.2f}%"
    for name in FIGURES:
        assert f"]({name}.png)" in report
    # What was measured, where, and how long it took.
    assert m["data"] in report and m["checkpoint"] in report and m["device"] in report
    assert f"{m['eval_s']:.1f} s" in report and "after epoch 2, training seed 42" in report


def test_training_history_is_read_from_the_run_csv(tiny_run):
    history = read_history(tiny_run / "csv" / "metrics.csv")
    for series in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert [epoch for epoch, _ in history[series]] == [1, 2], series
    steps = [step for step, _ in history["lr"]]
    assert len(steps) >= 4 and steps == sorted(steps)
    assert max(lr for _, lr in history["lr"]) == pytest.approx(1e-3, rel=0.2)  # the warmup reached the peak


def test_without_logs_the_history_is_skipped_with_a_note_and_tta_is_stated(tiny_run, tmp_path):
    ckpt = tmp_path / "elsewhere" / "model.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "last.ckpt", ckpt)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "training_history.png").write_bytes(b"from an earlier evaluation")
    m = run_evaluate(ckpt, out, "tta=true", "batch_size=32", "precision=bf16")
    assert m["history_csv"] is None and not (out / "training_history.png").exists()
    report = (out / "report.md").read_text()
    assert "Training History: not drawn (no training log found" in report
    assert (
        m["tta"] == "flip" and m["batch_size"] == 32 and "Test-time augmentation | horizontal flip" in report
    )
    assert m["precision"] == "bf16" and "| Batch size, precision | 32, bf16 autocast |" in report
    with pytest.raises(ConfigError, match="history=.*does not exist"):
        run_evaluate(ckpt, out, f"history={tmp_path / 'missing.csv'}")


def test_train_false_runs_the_same_evaluation(tiny_run, evaluation, tmp_path):
    m_eval, _ = evaluation
    cfg = compose_config(
        [
            *TINY_MODEL,
            *QUIET,
            *EVAL_DATA,
            "trainer=cpu",
            "train=false",
            f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}",
        ],
        tmp_path,
    )
    m_train = train(cfg)
    for key in ("test_acc", "confusion_matrix", "per_class", "top_confusions", "checkpoint", "data"):
        assert m_train[key] == m_eval[key], key
    assert m_train["calibration"]["ece"] == pytest.approx(m_eval["calibration"]["ece"])
    assert json.loads((tmp_path / "metrics.json").read_text())["test_acc"] == m_eval["test_acc"]
    assert (
        all((tmp_path / f"{name}.png").is_file() for name in FIGURES) and (tmp_path / "report.md").is_file()
    )
    assert m_train["tta"] == "none"
    overrides = [*TINY_MODEL, *QUIET, *EVAL_DATA, "trainer=cpu", "train=false", "tta=flip_shift"]
    with_tta = compose_config([*overrides, f"ckpt_path={cfg.ckpt_path}"], tmp_path / "tta")
    assert train(with_tta)["tta"] == "flip_shift"  # the checkpoint is tested with the run's tta


def test_flip_tta_averages_the_softmax_of_image_and_mirror(tiny_run):
    net = load_classifier(tiny_run / "checkpoints" / "last.ckpt").net
    x = torch.randn(6, 3, 32, 32)
    probs, labels = predict_probs(
        net, [(x[:4], torch.arange(4)), (x[4:], torch.arange(2))], torch.device("cpu"), tta=True
    )
    with torch.no_grad():
        expected = (net(x).softmax(-1) + net(x.flip(-1)).softmax(-1)) / 2
    torch.testing.assert_close(probs, expected)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1]


def reflected(index: torch.Tensor, size: int) -> torch.Tensor:
    """Where ``index`` (possibly out of 0..size-1) lands when the image is mirrored at its edges (reflect padding)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def test_flip_shift_tta_adds_diagonal_2_pixel_shifts_of_image_and_mirror(tiny_run):
    net = load_classifier(tiny_run / "checkpoints" / "last.ckpt").net
    x = torch.randn(3, 3, 32, 32)
    probs, _ = predict_probs(net, [x], torch.device("cpu"), tta="flip_shift")
    views = []
    for image in (x, x.flip(-1)):
        for shift in (2, -2):  # content moved down-right by 2, then up-left by 2; edges reflected
            rows = reflected(torch.arange(32) - shift, 32)
            views.append(image[:, :, rows][:, :, :, rows])
        views.append(image)
    down_right = views[0]  # its first row is the image's third, mirrored into the padding
    assert torch.equal(down_right[:, :, 2:, 2:], x[:, :, :-2, :-2]) and torch.equal(
        down_right[:, :, 0, 2:], x[:, :, 2, :-2]
    )
    with torch.no_grad():
        expected = sum(net(v).softmax(-1) for v in views) / 6
    torch.testing.assert_close(probs, expected)


def test_a_checkpoint_of_other_classes_than_the_data_is_refused(tiny_run, tmp_path):
    folder = write_image_folder(tmp_path / "images")  # 3 classes: cat, dog, frog
    with pytest.raises(CheckpointError, match=r"predicts 10 classes .* test data has 3 \(cat, dog, frog\)"):
        run_evaluate(
            tiny_run / "checkpoints" / "last.ckpt",
            tmp_path / "out",
            f"data.root={folder}",
            "data.source=folder",
            "data.num_classes=3",
            "data.cache_dir=null",
        )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cli_refuses_a_checkpoint_of_another_architecture_in_one_line(tiny_run, tmp_path):
    saved = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    saved["hyper_parameters"]["net"].update(depth=3, num_classes=5)  # the weights are of depth 2, 10 classes
    ckpt = tmp_path / "other.ckpt"
    torch.save(saved, ckpt)
    out = tmp_path / "evaluation"
    result = run_module("vit_cifar.evaluate", [f"ckpt_path={ckpt}", f"output_dir={out}", *EVAL_DATA])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: checkpoint {ckpt} does not fit the VisionTransformer it describes")
    assert "shapes differ (e.g. head.weight" in lines[0] and "tensors missing (e.g. blocks.2." in lines[0]
    assert not any(out.rglob("*")), "nothing may be written"


def test_jpeg_archive_classes_and_source_are_reported(jpeg_archive, tiny_run, tmp_path):
    """The real JPEG copy of CIFAR-10 as the source (a subset): its class names and path reach the report. The
    tiny network's weights stand in for a CIFAR-trained one (only its class names are CIFAR's)."""
    saved = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    saved["classes"] = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    ckpt = tmp_path / "cifar.ckpt"
    torch.save(saved, ckpt)
    out = tmp_path / "eval"
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"output_dir={out}", f"data.root={jpeg_archive}", "data.test_subset=200"],
        out,
        config_name="eval",
    )
    m = evaluate(cfg)
    assert m["classes"] == saved["classes"] and m["test_images"] == 200
    assert all(row["total"] == 20 for row in m["per_class"].values())
    assert str(jpeg_archive) in m["data"] and str(jpeg_archive) in (out / "report.md").read_text()


def test_bad_options_are_refused(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="^batch_size=0 is out of range: use an integer >= 1$"):
        run_evaluate(ckpt, tmp_path, "batch_size=0")
    with pytest.raises(
        ConfigError, match="^tta='shift' is unknown: use one of false, true, none, flip, flip_shift"
    ):
        run_evaluate(ckpt, tmp_path, "tta=shift")
    with pytest.raises(ConfigError, match="precision=16 is not supported here: use 32 .* or bf16"):
        run_evaluate(ckpt, tmp_path, "precision=16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda:0 was asked for but no CUDA GPU is available"):
            run_evaluate(ckpt, tmp_path, "device=cuda:0")
    with pytest.raises(ConfigError, match="ckpt_path=<checkpoint file> is required"):
        evaluate(compose_config([f"output_dir={tmp_path}"], tmp_path, config_name="eval"))
    assert not any(tmp_path.iterdir())
