"""One rule per config key: the schema and the constructor that takes the value refuse it with the same line,
and a constructor Hydra instantiates still ends a command in that one line."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL
from vit_cifar.config.entry import compose_config, run_cli
from vit_cifar.config.schema import RULES, validate_config
from vit_cifar.data.datamodule import CIFARDataModule
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD, batch_mix, train_transform
from vit_cifar.errors import Choice, ConfigError, Number, check
from vit_cifar.models.resnet import ResNet18
from vit_cifar.models.vit import VisionTransformer
from vit_cifar.training.callbacks import EMA, FiniteLossGuard, ProgressBar
from vit_cifar.training.module import ClassifierModule
from vit_cifar.training.monitoring import TensorBoardFigures
from vit_cifar.training.speed import apply_speed_settings, optimizer_kwargs_for

NET = {"_target_": "vit_cifar.models.vit.VisionTransformer", "embed_dim": 32, "depth": 1, "num_heads": 2}
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-3}

# override -> the same value given straight to the constructor that takes it
CASES = [
    ("model.depth=0", lambda: VisionTransformer(depth=0)),
    ("model.mlp_ratio=0", lambda: VisionTransformer(mlp_ratio=0)),
    ("model.attn_drop_rate=1.0", lambda: VisionTransformer(attn_drop_rate=1.0)),
    ("model.tokenizer=hybrid", lambda: VisionTransformer(tokenizer="hybrid")),
    ("model.embed_dim=100", lambda: VisionTransformer(embed_dim=100)),  # 100 heads of 3: not divisible
    ("model=resnet18 model.in_chans=0", lambda: ResNet18(in_chans=0)),
    ("aug.hflip_p=1.5", lambda: train_transform({"hflip_p": 1.5}, CIFAR10_MEAN, CIFAR10_STD, 32)),
    (
        "aug.random_crop_padding=-1",
        lambda: train_transform({"random_crop_padding": -1}, (0,) * 3, (1,) * 3, 32),
    ),
    ("aug.policy=trivial", lambda: train_transform({"policy": "trivial"}, CIFAR10_MEAN, CIFAR10_STD, 32)),
    ("aug.cutmix_alpha=-1", lambda: batch_mix({"cutmix_alpha": -1}, 10)),
    ("aug.label_smoothing=1.0", lambda: ClassifierModule(NET, ADAMW, {}, label_smoothing=1.0)),
    ("data.batch_size=0", lambda: CIFARDataModule(source="synthetic", batch_size=0)),
    ("data.repeated_aug=2.5", lambda: CIFARDataModule(source="synthetic", repeated_aug=2.5)),
    ("data.num_classes=1", lambda: CIFARDataModule(source="synthetic", num_classes=1)),
    ("callbacks=ema callbacks.ema.decay=1.0", lambda: EMA(decay=1.0)),
    ("callbacks.finite_loss.check_every_n_steps=0", lambda: FiniteLossGuard(check_every_n_steps=0)),
    ("callbacks.progress_bar.metrics_every_n_steps=0", lambda: ProgressBar(metrics_every_n_steps=0)),
    ("callbacks.tensorboard_figures.num_images=-1", lambda: TensorBoardFigures(num_images=-1)),
    (
        "matmul_precision=fast",
        lambda: apply_speed_settings(torch.nn.Linear(1, 1), torch.device("cpu"), False, "fast"),
    ),
    ("optim.fused=1", lambda: optimizer_kwargs_for(torch.optim.AdamW, {"fused": 1}, "cpu")),
]


def _refusal(action) -> str:
    with pytest.raises(ConfigError) as refused:
        action()
    return str(refused.value)


@pytest.mark.parametrize(("overrides", "construct"), CASES, ids=[c[0] for c in CASES])
def test_the_schema_and_the_constructor_refuse_a_value_in_the_same_words(tmp_path, overrides, construct):
    cfg = compose_config(overrides.split(), tmp_path)
    schema_line = _refusal(lambda: validate_config(cfg))
    assert schema_line.startswith(overrides.split()[-1].split("=")[0] + "=")
    assert _refusal(construct) == schema_line


def test_every_rule_of_a_group_that_a_constructor_checks_is_the_constructors_own():
    from vit_cifar.data import datamodule, transforms
    from vit_cifar.models import resnet, vit

    for group, owners in {"model": (vit, resnet), "data": (datamodule,), "aug": (transforms,)}.items():
        for owner in owners:
            for key, rule in owner.RULES.items():
                assert RULES[f"{group}.{key}"] == rule, f"{group}.{key}"


def test_a_value_instantiated_by_hydra_ends_the_command_in_the_constructors_line(tmp_path, capsys):
    """The schema is skipped here (a job that instantiates what the config names): Hydra wraps what the
    constructor raises, and run_cli still prints its one line and exits 2."""
    cfg = compose_config([*SYNTHETIC_SMALL, *TINY_MODEL, *QUIET, "callbacks=ema"], tmp_path)
    cfg.callbacks.ema.decay = 1.5

    def job(cfg):
        return hydra.utils.instantiate(OmegaConf.create(OmegaConf.to_container(cfg.callbacks.ema)))

    with pytest.raises(SystemExit) as stop:
        run_cli(job, cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: callbacks.ema.decay=1.5 is out of range: use a number in [0, 1) (0.9995 averages ~2,000 steps)"
    )


@pytest.mark.parametrize(
    ("value", "rule", "line"),
    [
        (True, Number(low=1, integer=True), "k=true has the wrong type: use an integer >= 1"),
        (float("nan"), Number(low=0), "k=nan has the wrong type: use a number >= 0"),
        (None, Number(low=0, high=1, optional=True), None),
        (None, Number(low=0, high=1), "k=null is not set: use a number in [0, 1]"),
        (1, Choice((True, False)), "k=1 is unknown: use one of true, false"),  # 1 == True, but not a flag
        (True, Choice(("auto", 16)), "k=true is unknown: use one of auto, 16"),
        (16, Choice(("auto", 16)), None),
    ],
)
def test_a_rule_names_the_key_the_value_and_what_is_allowed(value, rule, line):
    if line is None:
        check("k", value, rule)
    else:
        assert _refusal(lambda: check("k", value, rule)) == line
