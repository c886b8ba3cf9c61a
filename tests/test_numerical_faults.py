"""A non-finite loss stops the run with one line naming the step; the last good checkpoint is kept and no
checkpoint with NaN weights is ever written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faults_support import FAST_RUN, STEPS_PER_EPOCH, error_lines, train_cli
from vit_cifar.checkpoints.loading import read_checkpoint

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    step = STEPS_PER_EPOCH + 3  # in the second epoch, after epoch 0's checkpoints
    run = tmp_path / "run"
    poison = f"+callbacks.poison={{_target_:fault_callbacks.PoisonBatch,at_step:{step}}}"
    result = train_cli([*FAST_RUN, "trainer.max_epochs=3", poison, f"hydra.run.dir={run}"])

    assert result.returncode == 1
    last = run / "checkpoints" / "last.ckpt"
    assert error_lines(result) == [
        f"error: the training loss is nan at step {step} (epoch 2): stopped before that step's update; "
        f"last good checkpoint: {last}; lower optim.lr, keep trainer.gradient_clip_val, or train in "
        "trainer.precision=32-true or bf16-mixed"
    ]
    assert "Traceback" not in result.stderr
    assert not (run / "metrics.json").exists()
    checkpoints = list((run / "checkpoints").glob("*.ckpt"))
    assert last in checkpoints
    for path in checkpoints:
        checkpoint = read_checkpoint(path)
        assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, STEPS_PER_EPOCH)
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
