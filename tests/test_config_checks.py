"""A bad configuration stops before any work: one line naming the key and what is allowed, exit code 2, and
nothing written (Hydra has not made the run folder yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import as_on_a_t4
from faults_support import train_cli
from vit_cifar.config.entry import preflight
from vit_cifar.training.run import check_train_command

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.01", "error: unknown key optim.lrr: check its spelling"),
        ("optim.lr=0", "error: optim.lr=0 is out of range: use a number > 0"),
    ],
)
def test_bad_override_through_the_cli_writes_nothing(tmp_path: Path, override: str, message: str) -> None:
    # The default run folder, outputs/runs/<date>/<time>, would be made under the working directory.
    result = train_cli([override], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert result.stderr.startswith(message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1e-3"], "optim.lr=-0.001 is out of range: use a number > 0"),
        (["optim.lr=fast"], "optim.lr='fast' has the wrong type: use a number > 0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range: use an integer >= 1"),
        (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5 is not an integer: use an integer >= 1"),
        (["trainer.max_epochs=5"], "scheduler.warmup_epochs=10 is longer than trainer.max_epochs=5: shorten"),
        (["data.batch_size=0"], "data.batch_size=0 is out of range: use an integer >= 1"),
        (["data.batch_size=true"], "data.batch_size=true has the wrong type: use an integer >= 1"),
        (["model.embed_dim=100"], "model.embed_dim=100 is not divisible by model.num_heads=3: choose heads"),
        (["model.patch_size=5"], "model.patch_size=5 does not divide model.img_size=32: choose a patch size"),
        (["aug.erasing_p=1.5"], "aug.erasing_p=1.5 is out of range: use a number in [0, 1]"),
        (["aug.mix_prob=-0.1"], "aug.mix_prob=-0.1 is out of range: use a number in [0, 1]"),
        (["model.drop_rate=1.0"], "model.drop_rate=1.0 is out of range: use a number in [0, 1)"),
        (["aug.mixup_alpha=-0.2"], "aug.mixup_alpha=-0.2 is out of range: use a number >= 0"),
        (["aug.policy=trivial"], "aug.policy='trivial' is unknown: use one of trivialaugment, randaugment"),
        (["model.pool=max"], "model.pool='max' is unknown: use one of cls, mean"),
        (["scheduler.decay=step"], "scheduler.decay='step' is unknown: use one of cosine, linear"),
        (
            ["tta=maybe"],
            "tta='maybe' is unknown: use one of false, true, none, flip, flip_shift (false: none, true: flip)",
        ),
        (
            ["optim=muon", "optim.adjust_lr_fn=rms"],
            "optim.adjust_lr_fn='rms' is unknown: use one of original, match_rms_adamw, spectral_unclamped",
        ),
        (["trainer.precision=fp17"], "trainer.precision='fp17' is unknown: use one of "),
        (["trainer.max_time=55min"], "trainer.max_time='55min' is not a duration: use DD:HH:MM:SS"),
        (
            ["trainer.accelerator=tpu"],
            "trainer.accelerator='tpu' is unknown: use one of auto, cpu, gpu, cuda, mps",
        ),
        (["data.sha256=abc"], "data.sha256='abc' is not a checksum: use null or 64 hexadecimal digits"),
        (
            ["model.num_classes=5"],
            "model.num_classes=5 differs from data.num_classes=10: set data.num_classes (the model",
        ),
        (
            ["model=vit_huge"],
            "In 'train': Could not find 'model/vit_huge' Available options in 'model': resnet18 vit_tiny",
        ),
        (["optim.lr=1e-3,0"], "Ambiguous value for argument 'optim.lr=1e-3,0'"),
        (["-m", "optim.lr=1e-3,0"], "optim.lr=0 is out of range"),  # every job of a sweep is checked
        (
            ["ckpt_path=last", "hydra.run.dir=/nonexistent/run"],
            "ckpt_path=last but /nonexistent/run/checkpoints",
        ),
    ],
)
def test_preflight_names_the_key_and_the_allowed_range(capsys, overrides: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as stop:
        preflight("train", overrides, check_train_command)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=seed"],
        ["experiment=smoke"],
        ["debug=fdr"],
        ["debug=limit"],
        ["debug=overfit"],
        ["trainer=ddp"],
        ["trainer=gpu", "data=synthetic"],
        ["experiment=resnet18_baseline"],
        ["experiment=vit_best"],
        ["data=cifar100"],
        ["callbacks=ema"],
        ["-m", "optim.lr=1e-3,5e-4", "aug=seed,light"],
    ],
)
def test_shipped_configs_pass(capsys, monkeypatch, overrides: list[str]) -> None:
    as_on_a_t4(monkeypatch)  # trainer=gpu: the config is checked as on the seed's GPU
    preflight("train", overrides, check_train_command)
    assert capsys.readouterr().err == ""
