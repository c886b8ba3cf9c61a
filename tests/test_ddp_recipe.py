"""``trainer=ddp`` trains the recipe: ``data.batch_size`` stays the global batch (each of N processes takes a
1/N share), and each rank draws its own dropout masks and MixUp/CutMix parameters, from ``seed``, again after a
resume. Through the real CLI: 2 CPU processes (gloo)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import SYNTHETIC_SMALL, TINY_MODEL
from faults_support import train_cli

pytestmark = pytest.mark.e2e  # trains through the commands: not in the unit tier (make test-unit)

# 300 training images, a global batch of 32: 16 per rank, 9 full steps per epoch on each of 2 ranks.
# Dropout 0.5 and MixUp/CutMix on every batch, so every step draws masks and a mixing parameter.
RECIPE_DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    *TINY_MODEL,
    *SYNTHETIC_SMALL,
    "data.num_workers=0",
    "model.drop_rate=0.5",
    "aug=none",
    "aug.mixup_alpha=0.2",
    "aug.cutmix_alpha=1.0",
    "scheduler.warmup_epochs=1",
    "test=false",
]


class RecordDraws(L.Callback):
    """Writes ``draws-rank<r>.json`` into ``out_dir``: per epoch and step, this rank's batch size, its mixing
    parameter (the smallest top share of a mixed target: max(lam, 1 - lam)) and a hash of its first dropout
    mask (where the first dropout layer's output is zero)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: dict[int, list] = {}
        self.mask = ""

    def on_fit_start(self, trainer, pl_module) -> None:
        dropout = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)
        dropout.register_forward_hook(self._hash_mask)

    def _hash_mask(self, module, inputs, output) -> None:
        if module.training:
            self.mask = hashlib.sha1((output == 0).numpy().tobytes()).hexdigest()[:16]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        images, targets = batch
        mix = round(float(targets.max(dim=1).values.min()), 6)
        self.steps.setdefault(trainer.current_epoch, []).append([len(images), mix, self.mask])

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step, "steps": self.steps}
        (self.out_dir / f"draws-rank{trainer.global_rank}.json").write_text(json.dumps(record))


def train_and_record(tmp_path: Path, name: str, *args: str, run: str | None = None) -> list[dict]:
    """Train with ``RECIPE_DDP`` and ``args`` into ``run`` (default: ``name``), and each rank's draws."""
    out = tmp_path / name
    record = f"+callbacks.draws={{_target_:test_ddp_recipe.RecordDraws,out_dir:'{out}'}}"
    result = train_cli([*RECIPE_DDP, *args, record, f"hydra.run.dir={tmp_path / (run or name)}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"draws-rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_share_the_global_batch_and_draw_their_own_masks_and_mixing(tmp_path: Path) -> None:
    whole = train_and_record(tmp_path, "whole", "trainer.max_epochs=2")

    # data.batch_size=32 is the global batch: each of the 2 ranks takes 16 images a step, 9 steps per epoch
    # (150 images per rank), the steps of one process training at batch 32.
    assert [r["world_size"] for r in whole] == [2, 2] and [r["global_step"] for r in whole] == [18, 18]
    for rank in whole:
        assert [len(rank["steps"][e]) for e in ("0", "1")] == [9, 9]
        assert {size for e in ("0", "1") for size, _, _ in rank["steps"][e]} == {16}

    # The ranks draw their own dropout masks (every step) and mixing parameters.
    for epoch in ("0", "1"):
        steps = [rank["steps"][epoch] for rank in whole]
        assert all(s0[2] != s1[2] for s0, s1 in zip(*steps, strict=True))
        assert [s[1] for s in steps[0]] != [s[1] for s in steps[1]]

    # The same seed draws the same again; a run resumed from the end of its first epoch draws, on each rank,
    # what that rank drew in the uninterrupted run.
    first = train_and_record(tmp_path, "first", "trainer.max_epochs=1", run="parts")
    resumed = train_and_record(tmp_path, "resumed", "trainer.max_epochs=2", "ckpt_path=last", run="parts")
    for rank in (0, 1):
        assert first[rank]["steps"]["0"] == whole[rank]["steps"]["0"]
        assert list(resumed[rank]["steps"]) == ["1"]
        assert resumed[rank]["steps"]["1"] == whole[rank]["steps"]["1"]


def test_a_global_batch_that_does_not_divide_among_the_ranks_stops_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train_cli([*RECIPE_DDP, "trainer.devices=3", f"hydra.run.dir={run}"])  # 32 images, 3 ranks
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: data.batch_size=32 (the global batch) does not divide among 3 processes: "
        "set it to a multiple of 3"
    ]
    assert not run.exists()
