"""Precision choices and what the module reports: gradient clipping by value with fused AdamW, the loss
metrics weighted by images (1 and 3 processes), and the precision ``trainer=gpu`` takes on each GPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from faults_support import train_cli
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.devices import DeviceSpec, resolve_precision
from vit_cifar.training.run import build_datamodule, train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)


@pytest.mark.parametrize("algorithm", ["value", "norm"])
def test_fused_adamw_clips_by_the_algorithm_asked_for(tmp_path, monkeypatch, algorithm):
    """bf16-mixed with fused AdamW goes through ClassifierModule's own clipping, which Lightning calls with
    its GradClipAlgorithmType enum: ``value`` must clip each gradient value, ``norm`` the total norm."""
    calls = []
    for name in ("clip_grad_value_", "clip_grad_norm_"):
        original = getattr(torch.nn.utils, name)
        monkeypatch.setattr(
            torch.nn.utils, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k)
        )
    overrides = [*TINY_MODEL, *QUIET, *SYNTHETIC_SMALL, "trainer.accelerator=cpu", "aug=none", "debug=fdr"]
    overrides += [
        "optim.fused=true",
        "trainer.precision=bf16-mixed",
        f"trainer.gradient_clip_algorithm={algorithm}",
    ]
    train(compose_config(overrides, tmp_path))
    assert calls == [f"clip_grad_{algorithm}_"]  # debug=fdr: one training step


# 350 training, 50 validation and 70 test images in evaluation batches of 16: the last batches are short in
# one process (2 and 6 images) and on each of 3 ranks (17, 17, 16 validation images; 24, 23, 23 test images).
UNEVEN = [
    *TINY_MODEL,
    *SYNTHETIC_SMALL,
    "trainer=cpu",
    "aug=none",
    "data.num_workers=0",
    "data.synthetic.train_per_class=40",
    "data.synthetic.test_per_class=7",
    "data.val_size=50",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "scheduler.warmup_epochs=0",
    "optim.lr=3e-3",
]
DDP3 = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=3",
    "data.batch_size=30",
]  # the global batch


def _mean_loss(net, dataset) -> float:
    """The plain loop: one cross-entropy mean over every image of the split."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return F.cross_entropy(net(x), dataset.labels).item()


@pytest.mark.parametrize("processes", [1, 3])
def test_validation_and_test_loss_are_means_over_images(tmp_path, processes):
    """One process, or 3 gloo processes through the CLI with the default callbacks (progress bar included):
    the logged validation and test losses are each split's mean over its images, whatever the batches."""
    run = tmp_path / "run"
    args = UNEVEN if processes == 1 else [*UNEVEN, *DDP3]
    result = train_cli([*args, f"hydra.run.dir={run}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_images"] == 50 and metrics["test_images"] == 70
    with open(run / "csv" / "metrics.csv") as f:
        val_loss = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]

    datamodule = build_datamodule(compose_config(UNEVEN, tmp_path / "single"))
    datamodule.setup("fit")
    # One epoch: the last checkpoint holds the weights validated, and is the one tested.
    assert Path(metrics["checkpoint"]).name.startswith("step")  # named by the optimiser steps done
    net = load_classifier(run / "checkpoints" / "last.ckpt").net
    assert val_loss == [pytest.approx(_mean_loss(net, datamodule.val_set), rel=1e-6)]
    assert metrics["test_loss"] == pytest.approx(_mean_loss(net, datamodule.test_set), rel=1e-6)


@pytest.mark.parametrize(("capability", "precision"), [((9, 0), "bf16-mixed"), ((7, 5), "16-mixed")])
def test_trainer_gpu_takes_the_precision_the_gpu_supports_best(tmp_path, capability, precision):
    cfg = compose_config(["experiment=seed", "trainer=gpu"], tmp_path)
    assert resolve_precision(cfg.trainer.precision, DeviceSpec.cuda(*capability)) == precision
