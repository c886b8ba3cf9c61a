"""``python -m vit_cifar.benchmark --loader``: the training DataLoader a run uses, per worker count and aug
preset. (How fast is the benchmark's to say, never a test's.)"""

import json
from pathlib import Path

import pytest

from vit_cifar import benchmark
from vit_cifar.data import CIFARDataModule


def test_loader_mode_times_the_datamodules_training_loader_for_each_worker_count_and_aug(
    tmp_path, monkeypatch
):
    made = []
    real = CIFARDataModule.train_dataloader

    def recorded(self):
        made.append((self.aug["policy"], self.aug["random_crop_padding"], real(self)))
        return made[-1][-1]

    monkeypatch.setattr(CIFARDataModule, "train_dataloader", recorded)
    argv = ["--loader", "--tiny", "--workers", "0", "1", "--out", str(tmp_path), "trainer.accelerator=cpu"]
    written = Path(benchmark.run(argv)["path"])
    assert written.parent == tmp_path and written.name.endswith("-loader-tiny.json")
    saved = json.loads(written.read_text())
    assert "training" not in saved and saved["load_average"]["before"] and saved["device"]["cpu"]
    rates = {(v["aug"], v["workers"]): v for v in saved["loader"].values()}
    assert set(rates) == {(aug, w) for aug in ("light", "none", "seed") for w in (0, 1)}
    for rate in rates.values():
        assert len(rate["runs"]) == 2 and rate["mean"] > 0 and rate["sampler"] == "SeededShuffleSampler"
    # with 0 workers the process's CPU time is the loader's: its rate per CPU-second is given too
    assert "per_cpu_second" in rates["seed", 0] and "per_cpu_second" not in rates["seed", 1]
    # each setting is the DataModule's own training loader, with the preset's augmentation
    assert len(made) == 6 and {loader.num_workers for *_, loader in made} == {0, 1}
    assert {(policy, pad) for policy, pad, _ in made} == {("none", 0), ("none", 4), ("trivialaugment", 0)}


@pytest.mark.parametrize("flag", [["--workers", "-1"], ["--workers", "1", "-2"]])
def test_a_negative_worker_count_stops_with_one_line(flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--loader", "--tiny", "--out", str(tmp_path), *flag])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --workers={flag[-1]} must be at least 0"
    assert not list(tmp_path.iterdir())
