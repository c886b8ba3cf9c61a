"""One rule per config key, checked once, in the schema: the rules of the model, data and aug groups are the
ones declared beside the code that takes them, constructors do not check again, and what a constructor's
arithmetic refuses (a ValueError) still ends a command in one line with exit code 2."""

from __future__ import annotations

import hydra
import pytest
from omegaconf import OmegaConf

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL
from faults_support import train_cli
from vit_cifar.config.entry import compose_config, run_cli
from vit_cifar.config.schema import RULES, validate_config
from vit_cifar.errors import Choice, ConfigError, Number, check
from vit_cifar.models.vit import VisionTransformer


def _refusal(action) -> str:
    with pytest.raises(ConfigError) as refused:
        action()
    return str(refused.value)


def test_every_rule_of_a_group_is_the_one_declared_beside_its_code():
    from vit_cifar.data import datamodule, transforms
    from vit_cifar.models import resnet, vit

    for group, owners in {"model": (vit, resnet), "data": (datamodule,), "aug": (transforms,)}.items():
        for owner in owners:
            for key, rule in owner.RULES.items():
                assert RULES[f"{group}.{key}"] == rule, f"{group}.{key}"


def test_a_constructor_trusts_its_checked_arguments():
    """Each argument's range is the schema's: the constructor does not check it again (a dropout rate the
    schema refuses builds here, and only the schema names it)."""
    assert VisionTransformer(embed_dim=32, depth=1, num_heads=2, drop_rate=1.0).blocks[0].mlp.drop1.p == 1.0


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["optim._target_=torch.optim.__builtins__"],
            "optim._target_=torch.optim.__builtins__ is not an optimiser",
        ),
        (
            ["optim._target_=torch.optim.Adam_W"],
            "optim._target_=torch.optim.Adam_W is not an optimiser class",
        ),
        (
            ["optim._target_=os.system"],
            "optim._target_='os.system' is not allowed: name an optimiser class in",
        ),
        (
            ["optim._target_=torch.optim.lr_scheduler.LambdaLR"],
            "optim._target_=torch.optim.lr_scheduler.LambdaLR is not an",
        ),
    ],
)
def test_the_optimiser_is_a_class_of_torch_optim(tmp_path, overrides, line):
    assert _refusal(lambda: validate_config(compose_config(overrides, tmp_path))).startswith(line)


def test_a_shape_the_network_refuses_is_one_line_before_any_run_folder(tmp_path):
    """The ViT's constructor raises a ValueError for heads that do not divide the width; the pre-flight builds
    the network (on the meta device) and ends the command in that line, exit code 2, nothing written."""
    result = train_cli([*SYNTHETIC_SMALL, *QUIET, "model.embed_dim=100"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model.embed_dim=100 is not divisible by model.num_heads=3: choose heads that divide the width "
        "(e.g. 192 with 3, 4, 6 or 12 heads)"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_value_error_of_a_constructor_hydra_instantiates_ends_the_command_in_one_line(tmp_path, capsys):
    """Past the pre-flight (a job that instantiates what the config names): Hydra wraps the constructor's
    ValueError, and run_cli prints its one line and exits 2."""
    cfg = compose_config([*SYNTHETIC_SMALL, *TINY_MODEL, *QUIET], tmp_path)
    cfg.model.patch_size = 5

    def job(cfg):
        return hydra.utils.instantiate(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))

    with pytest.raises(SystemExit) as stop:
        run_cli(job, cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: model.patch_size=5 does not divide model.img_size=32: choose a patch size that divides the "
        "image (e.g. 2, 4 or 8 for 32x32)"
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
