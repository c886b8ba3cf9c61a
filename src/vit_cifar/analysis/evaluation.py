"""Evaluate a checkpoint on the test split of any source the DataModule reads: the seed's figures, a
reliability diagram, ``metrics.json`` and ``report.md``. :func:`evaluate_checkpoint` is the whole job, for
``python -m vit_cifar.evaluate`` and ``python -m vit_cifar.train train=false`` alike (one path, two ways in)."""

from __future__ import annotations

import csv
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vit_cifar.analysis import plots
from vit_cifar.analysis.metrics import summarise
from vit_cifar.analysis.report import SAMPLES, render_report, summary_line
from vit_cifar.checkpoints.atomic import staged_results
from vit_cifar.checkpoints.loading import LoadedClassifier, beside_run, epochs_done, required_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.errors import POSITIVE_INT, CheckpointError, ConfigError, Number, check
from vit_cifar.inference import engine
from vit_cifar.inference.runtime import check_runtime_options, count_params, open_for_inference

SAMPLE_SEED = 42  # the seed's sample and misclassified grids draw their images with seed 42
FIGURES = (
    "per_class_accuracy",
    "confusion_matrix",
    "sample_predictions",
    "misclassified_samples",
    "training_history",
    "reliability_diagram",
)
OWN_FILES = ("metrics.json", "report.md", *(f"{name}.png" for name in FIGURES))  # an evaluation's outputs


# configs/eval.yaml's own values, checked once by evaluate before any work (the train config checks its own).
RULES = {
    "batch_size": POSITIVE_INT,
    "num_workers": Number(low=0, integer=True, hint="0 loads in this process"),
}


# Columns of the CSV log -> series names; epoch-level values are keyed by epoch, the learning rate by step.
EPOCH_COLUMNS = {"train/loss_epoch": "train/loss", **{c: c for c in ("train/acc", "val/loss", "val/acc")}}


def find_history(ckpt_path: str | Path, given: str | None) -> tuple[Path | None, dict | None, str | None]:
    """The CSV log to plot (the one given, which must exist, or the checkpoint's run's when it has one), its
    history, and why there is none to plot when there is not."""
    if given and not Path(given).is_file():
        raise ConfigError(
            f"history={given} does not exist: give the run's csv/metrics.csv, or leave it unset"
        )
    # The train command logs a run whose checkpoints sit in <run>/checkpoints/ to <run>/csv/metrics.csv.
    path = Path(given) if given else Path(ckpt_path).resolve().parent.parent / "csv" / "metrics.csv"
    if not path.is_file():
        why = (
            "no training log found beside the checkpoint (<run>/csv/metrics.csv); pass history=<metrics.csv>"
        )
        return None, None, why
    try:
        history = read_history(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return path, None, f"{path} could not be read: {err}"
    if not any(history.values()):
        return path, None, f"{path} holds no epoch or learning-rate values"
    return path, history, None


def read_history(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Series ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` as (epoch, value), one point per epoch
    (the last logged, so a resumed epoch counts once), and ``lr`` as (step, value) from the first param
    group."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # train/lr/decay (the weights' group) first; runs logged before the groups had names: lr-<optimiser>/pg1
    lr_columns = sorted(c for c in (rows[0] if rows else ()) if c.startswith(("train/lr", "lr-")))
    columns = {**EPOCH_COLUMNS, **({lr_columns[0]: "lr"} if lr_columns else {})}
    points: dict[str, dict[int, float]] = {name: {} for name in (*EPOCH_COLUMNS.values(), "lr")}
    for row in rows:
        for column, name in columns.items():
            # the log's epochs count from 0 (Lightning's): plotted as epochs done, as the epoch log numbers them
            if row.get(column) and row["step" if name == "lr" else "epoch"]:
                x = int(float(row["step"])) if name == "lr" else epochs_done(float(row["epoch"]))
                points[name][x] = float(row[column])
    return {name: sorted(series.items()) for name, series in points.items()}


def evaluate_checkpoint(
    ckpt_path: str | Path,
    data_cfg: dict,
    output_dir: str | Path,
    device: str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool | str = False,
    threads: int | None = None,
    history: str | None = None,
    precision: str = "32",
    runtime: str = "torch",  # torch | onnx (an .onnx file from python -m vit_cifar.export, run by onnxruntime)
) -> dict:
    """Evaluate ``ckpt_path`` on the test split of the DataModule ``data_cfg`` describes (the options are
    configs/eval.yaml's); write everything to ``output_dir`` (all or nothing) and return ``metrics.json``."""
    start = time.perf_counter()
    tta = engine.tta_mode(tta)
    loaded, device, dtype = open_for_inference(ckpt_path, runtime, device, threads, precision)
    history_csv, history, history_note = find_history(ckpt_path, history)
    datamodule, classes = evaluation_data(data_cfg, loaded, batch_size, num_workers)
    tic = time.perf_counter()
    probs, targets = engine.predict_probs(
        loaded.net, datamodule.test_dataloader(), device, tta=tta, dtype=dtype
    )
    eval_s = time.perf_counter() - tic
    metrics = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "checkpoint_name": Path(ckpt_path).name,
        "checkpoint_after_epoch": loaded.epoch,
        "train_seed": loaded.run_config.get("seed"),
        "model": type(loaded.net).__name__,
        "params": count_params(loaded),
        "runtime": str(runtime),
        "data": datamodule.description,
        "device": engine.describe_device(device),
        "tta": tta,
        "precision": str(precision),
        "batch_size": int(batch_size),
        "eval_s": round(eval_s, 2),
        "images_per_s": round(len(targets) / eval_s, 1),
        "sample_seed": SAMPLE_SEED,
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": classes,
        **summarise(probs, targets, classes),
        "history_csv": str(history_csv) if history_csv else None,
    }
    images = datamodule.test_set.images.permute(0, 2, 3, 1).numpy()  # (N, 3, H, W) -> (N, H, W, 3) uint8
    # Drawn and written into a hidden folder beside output_dir, then moved into place: a failure leaves no
    # half-written output, and no figure of an earlier evaluation that this report does not show stays behind.
    with staged_results(Path(output_dir), OWN_FILES) as staging:
        draw_figures(staging, metrics, probs, targets, images, history)
        metrics["wall_s"] = round(time.perf_counter() - start, 2)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (staging / "report.md").write_text(render_report(metrics, history_note))
    print(summary_line(metrics))
    print(f"wrote the figures, metrics.json and report.md to {output_dir}")
    return metrics


def evaluation_data(data_cfg: dict, loaded: LoadedClassifier, batch_size: int, num_workers: int = 0):
    """The DataModule ``data_cfg`` describes, set up for its test split as ``loaded``'s network is fed, and the
    class names to report; an error when the checkpoint was trained on other classes than the data's."""
    datamodule = engine.evaluation_datamodule(data_cfg, engine.input_spec(loaded), batch_size, num_workers)
    datamodule.prepare_data()
    datamodule.setup("test")
    data_classes = list(datamodule.classes)
    unnamed = loaded.classes == [str(i) for i in range(len(loaded.classes))]  # a checkpoint without names
    if len(loaded.classes) != len(data_classes) or (not unnamed and loaded.classes != data_classes):
        few = lambda names: ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise CheckpointError(
            f"checkpoint {loaded.path} predicts {len(loaded.classes)} classes ({few(loaded.classes)}) but "
            f"the test data has {len(data_classes)} ({few(data_classes)}): use the data it was "
            "trained on (set data.root / data=...)"
        )
    return datamodule, data_classes


def draw_figures(
    folder: Path, m: dict, probs: torch.Tensor, targets: torch.Tensor, images: np.ndarray, history
):
    """Every figure into ``folder``, as ``<name>.png``; the training history only when there is one."""
    classes = m["classes"]
    confidence, predicted = (t.numpy() for t in probs.max(dim=1))
    truth = targets.numpy()
    correct = predicted == truth
    per_class = [m["per_class"][c]["accuracy"] for c in classes]
    per_class = [np.nan if a is None else a for a in per_class]  # a class without test images
    plots.per_class_accuracy(classes, per_class, m["test_acc"], folder / "per_class_accuracy.png")
    plots.confusion_matrix(np.array(m["confusion_matrix"]), classes, folder / "confusion_matrix.png")
    errors = np.flatnonzero(~correct)
    for pool, name in ((np.arange(len(truth)), "sample_predictions"), (errors, "misclassified_samples")):
        pick = pool[
            np.random.default_rng(SAMPLE_SEED).choice(len(pool), min(SAMPLES, len(pool)), replace=False)
        ]
        if name == "sample_predictions":
            titles = [f"{classes[predicted[i]]} ({confidence[i]:.2f})" for i in pick]
            heading = f"Sample predictions ({len(pick)} random test images, seed {SAMPLE_SEED})"
        else:
            titles = [f"{classes[truth[i]]} -> {classes[predicted[i]]} ({confidence[i]:.2f})" for i in pick]
            heading = f"Misclassified samples ({len(pick)} of {len(errors):,} errors, seed {SAMPLE_SEED})"
        colours = [plots.GREEN if correct[i] else plots.RED for i in pick]
        plots.image_grid(images[pick], titles, colours, heading, folder / f"{name}.png")
    if history is not None:
        plots.training_history(history, folder / "training_history.png")
    plots.reliability_diagram(
        m["calibration"], m["per_class"], confidence, correct, folder / "reliability_diagram.png"
    )


def evaluate(cfg: DictConfig) -> dict:
    """The ``python -m vit_cifar.evaluate`` job: ``configs/eval.yaml`` -> :func:`evaluate_checkpoint`."""
    ckpt_path = required_ckpt_path(cfg)
    for key, rule in RULES.items():
        check(key, cfg[key], rule)
    check_runtime_options(cfg.runtime, cfg.device, cfg.precision)
    output_dir = check_output_place(
        cfg.output_dir or beside_run(ckpt_path, "evaluation"), "output_dir", folder=True
    )
    keys = ("device", "batch_size", "num_workers", "tta", "threads", "history", "precision", "runtime")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    return evaluate_checkpoint(ckpt_path, data_cfg, output_dir, **{key: cfg[key] for key in keys})


def evaluate_from_train_config(cfg: DictConfig, ckpt_path: str | Path) -> dict:
    """``python -m vit_cifar.train train=false ckpt_path=<file>``: the same evaluation, into the run folder,
    with the train config's data, trainer device, evaluation batch size and ``tta`` (tested as the run tests)."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    workers, tta = cfg.data.num_workers or 0, cfg.get("tta", False)
    device, batch_size = cfg.trainer.accelerator, cfg.data.eval_batch_size
    return evaluate_checkpoint(ckpt_path, data_cfg, cfg.paths.output_dir, device, batch_size, workers, tta)
