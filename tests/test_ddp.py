"""``trainer=ddp`` through the real CLI: 2 CPU processes (gloo) see disjoint data, and the validation accuracy
they log together is the accuracy of the saved checkpoint evaluated in a single process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from conftest import compose_config
from fault_callbacks import image_hashes
from faults_support import FAST_RUN, train_cli
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.training.run import build_datamodule

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

# aug=none: an image looks the same whichever rank sees it, so ranks can be compared by image hashes.
# 300 training and 100 validation images split evenly over 2 ranks: no sample is padded in twice.
DDP_RUN = [
    *FAST_RUN,
    "aug=none",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_epochs=2",
]


def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    run = tmp_path / "run"
    record = f"+callbacks.record={{_target_:fault_callbacks.RecordSeenImages,out_dir:'{tmp_path / 'seen'}'}}"
    result = train_cli([*DDP_RUN, record, f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test_acc=") == 1  # only rank 0 reports and writes metrics.json

    ranks = [json.loads((tmp_path / "seen" / f"seen-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["sampler"] for r in ranks] == ["SeededShuffleSampler"] * 2  # a DistributedSampler: kept as is

    datamodule = build_datamodule(compose_config(DDP_RUN, tmp_path / "single"))
    datamodule.setup("fit")
    train_images = set(image_hashes(torch.stack([x for x, _ in datamodule.train_set])))
    val_x = torch.stack([x for x, _ in datamodule.val_set])
    for epoch in ("0", "1"):
        seen = [set(r["train"][epoch]) for r in ranks]
        assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] <= train_images
        assert [len(r["train"][epoch]) for r in ranks] == [9 * 16, 9 * 16]  # 150 each; 32 a step, 16 a rank
    assert set(ranks[0]["val"]).isdisjoint(ranks[1]["val"])
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == sorted(image_hashes(val_x))  # every image once

    # The accuracy logged from both ranks equals one process evaluating the checkpoint on the whole split.
    net = load_classifier(run / "checkpoints" / "last.ckpt").net
    with torch.no_grad():
        accuracy = MulticlassAccuracy(10, average="micro")(net(val_x), datamodule.val_set.labels)
    logged = json.loads((run / "metrics.json").read_text())["val_acc_last_epoch"]
    assert logged == float(accuracy)
