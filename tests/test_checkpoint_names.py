"""A checkpoint may name only a network class of our package: any other name in it (a function, a module's
``__builtins__``, a module) is one line naming the file in every command that reads checkpoints (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL
from faults_support import command_cli, error_lines
from vit_cifar.errors import CheckpointError, ConfigError
from vit_cifar.models.registry import NETWORK_PACKAGES, locate

NOT_NETWORKS = [
    "vit_cifar.models.__builtins__",  # a dict
    "vit_cifar.models.registry.locate",  # a function
    "vit_cifar.models.vit",  # a module
    "vit_cifar.models.registry.ConfigError",  # a class, but not a network
]


@pytest.mark.parametrize("target", NOT_NETWORKS)
def test_only_a_network_class_is_located(target):
    with pytest.raises(ConfigError, match=rf"^model\._target_={target} is not a network class: name one in"):
        locate(target, NETWORK_PACKAGES, "model")
    assert locate("vit_cifar.models.ResNet18", NETWORK_PACKAGES, "model").__name__ == "ResNet18"


def _crafted(folder: Path, target: str) -> Path:
    """A checkpoint shaped like a training one (network config, weights, optimiser state) naming ``target``."""
    path = folder / "crafted.ckpt"
    net = {"_target_": target, "embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.save(
        {
            "hyper_parameters": {"net": net},
            "state_dict": {"net.head.weight": torch.zeros(10, 32)},
            "optimizer_states": [{}],
            "epoch": 0,
            "global_step": 1,
        },
        path,
    )
    return path


@pytest.mark.parametrize("target", NOT_NETWORKS[:2])
def test_reading_a_checkpoint_that_names_no_network_class_is_one_line_naming_it(tmp_path, target):
    from vit_cifar.checkpoints.loading import load_classifier
    from vit_cifar.checkpoints.resume import check_fits
    from vit_cifar.config.entry import compose_config

    path = _crafted(tmp_path, target)
    expected = rf"^checkpoint {path} names a network that cannot be built: model\._target_={target} is not a"
    with pytest.raises(CheckpointError, match=expected):
        load_classifier(path)
    cfg = compose_config([*SYNTHETIC_SMALL, *TINY_MODEL], tmp_path / "run")
    with pytest.raises(CheckpointError, match=expected):
        check_fits(path, cfg)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("train", ["trainer=cpu", *TINY_MODEL, *QUIET, *SYNTHETIC_SMALL]),  # resume
        ("evaluate", [*SYNTHETIC_SMALL[:3]]),
        ("visualize", ["inputs={image}"]),
        ("predict", ["inputs={image}"]),
        ("export", ["format=safetensors"]),
    ],
)
def test_every_command_refuses_it_in_one_line_and_writes_nothing(tmp_path, command, args):
    image = tmp_path / "inputs" / "photo.png"
    image.parent.mkdir()
    Image.new("RGB", (32, 32)).save(image)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    path = _crafted(ckpts, "vit_cifar.models.__builtins__")
    run = tmp_path / "run"
    result = command_cli(
        command,
        [
            f"ckpt_path={path}",
            *(a.format(image=image) for a in args),
            *([f"hydra.run.dir={run}"] if command == "train" else []),
        ],
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"error: checkpoint {path} names a network that cannot be built: "
        "model._target_=vit_cifar.models.__builtins__ is not a network class: name one in vit_cifar.models."
    ]
    assert sorted(p.name for p in ckpts.iterdir()) == ["crafted.ckpt"]  # no export, evaluation, attention
    assert not (run / "checkpoints").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpts",
        "inputs",
        *(["run"] if run.exists() else []),
    ]
