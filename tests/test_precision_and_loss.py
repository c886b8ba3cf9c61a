"""Precision choices and what the module reports: gradient clipping by value with fused AdamW, the loss
metrics weighted by images (1 and 3 processes), and the precision ``trainer=gpu`` takes on each GPU."""

from __future__ import annotations

import pytest
import torch

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from vit_cifar.devices import DeviceSpec, resolve_precision
from vit_cifar.training.run import train

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


@pytest.mark.parametrize(("capability", "precision"), [((9, 0), "bf16-mixed"), ((7, 5), "16-mixed")])
def test_trainer_gpu_takes_the_precision_the_gpu_supports_best(tmp_path, capability, precision):
    cfg = compose_config(["experiment=seed", "trainer=gpu"], tmp_path)
    assert resolve_precision(cfg.trainer.precision, DeviceSpec.cuda(*capability)) == precision
