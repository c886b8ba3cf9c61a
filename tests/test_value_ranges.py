"""Every number of the configuration is finite and within its meaningful range before any work: a key with a
rule of its own gets that rule's line, any other number must at least be finite (issue 22)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from PIL import Image

from conftest import compose_config
from faults_support import train_cli
from vit_cifar.config.entry import preflight
from vit_cifar.config.schema import validate_config
from vit_cifar.errors import ConfigError
from vit_cifar.training.run import check_train_command

# The shipped groups that add numbers of their own (EMA, SGD's momentum, the synthetic source, the debug limits)
VARIANTS = [[], ["callbacks=ema", "optim=sgd", "data=synthetic", "debug=limit"], ["debug=overfit"]]


def _numbers(node, prefix: str = ""):
    """The key of every number the config holds, list items included (``optim.betas[0]``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        name = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix.rstrip('.')}[{key}]"
        if isinstance(value, dict | list):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: " ".join(v) or "default")
def test_every_number_of_the_config_refuses_infinity_naming_its_key(tmp_path: Path, variant: list[str]):
    cfg = compose_config(variant, tmp_path)
    validate_config(cfg)  # the shipped values pass
    plain = OmegaConf.to_container(cfg, resolve=False)  # numbers only where they are written, not pointed at
    keys = list(_numbers(plain))
    assert len(keys) > 30
    for key in keys:
        for bad in (math.inf, -math.inf):
            broken = copy.deepcopy(cfg)
            node, last = _parent(broken, key)
            with open_dict(node):
                node[last] = bad
            with pytest.raises(ConfigError) as refused:
                validate_config(broken)
            line = str(refused.value)
            # a list's items are ruled as a whole (optim.betas=[inf, 0.999]) or one by one (model.foo[1]=inf)
            assert line.startswith((f"{key}={bad} ", f"{key.split('[')[0]}=[")), line
            assert "\n" not in line


def _parent(cfg: DictConfig, key: str):
    """The node that holds ``key`` (``optim.betas[0]``, ``data.mean[2]``) and the last part of it."""
    path, _, index = key.partition("[")
    if index:
        return OmegaConf.select(cfg, path), int(index.rstrip("]"))
    parent, _, last = path.rpartition(".")
    return (OmegaConf.select(cfg, parent) if parent else cfg), last


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=inf"], "optim.lr=inf is not finite: use a number > 0"),
        (
            ["optim.betas=[0.9,1.0]"],
            "optim.betas=[0.9, 1.0] is out of range: use a list of 2, each a number in",
        ),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] is not a list of the right length"),
        (["+optim.eps=0"], "optim.eps=0 is out of range: use a number > 0"),
        (["optim=sgd", "optim.momentum=-0.5"], "optim.momentum=-0.5 is out of range: use a number in [0, 1)"),
        (
            ["data.std=[0.2,0.2,0]"],
            "data.std=[0.2, 0.2, 0] is out of range: use a list of 3, each a number > 0",
        ),
        (["data.mean=[0.5,0.5]"], "data.mean=[0.5, 0.5] is not a list of the right length"),
        (
            ["data=synthetic", "data.synthetic.train_per_class=0"],
            "data.synthetic.train_per_class=0 is out of",
        ),
        (
            ["callbacks.model_checkpoint.save_top_k=-2"],
            "callbacks.model_checkpoint.save_top_k=-2 is out of range",
        ),
        (["+trainer.limit_train_batches=-1"], "trainer.limit_train_batches=-1 is out of range"),
        (["+optim.foo=nan"], "optim.foo=nan has the wrong type: use a number"),
        (["trainer.max_epochs=inf"], "trainer.max_epochs=inf is not finite: use an integer >= 1"),
    ],
)
def test_a_value_outside_its_range_stops_the_preflight_in_one_line(capsys, overrides, message):
    with pytest.raises(SystemExit) as stop:
        preflight("train", overrides, check_train_command)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}")


def test_the_schema_refuses_a_bad_mean_by_the_datamodules_rule(tmp_path: Path):
    cfg = compose_config(["data.mean=[0.5,2.0,0.5]"], tmp_path)
    assert isinstance(cfg.data.mean, ListConfig)  # as the DataModule would be given it
    with pytest.raises(ConfigError, match=r"^data\.mean=\[0\.5, 2\.0, 0\.5\] is out of range"):
        validate_config(cfg)


@pytest.mark.e2e
def test_an_infinite_learning_rate_is_refused_before_any_run_folder(tmp_path: Path):
    result = train_cli(["optim.lr=inf"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: optim.lr=inf is not finite: use a number > 0"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("command", "args", "line"),
    [
        ("predict", ["top_k=inf"], "error: top_k=inf is not finite: use an integer >= 1"),
        (
            "evaluate",
            ["batch_size=inf", "data=synthetic"],
            "error: batch_size=inf is not finite: use an integer",
        ),
        ("visualize", ["seed=inf"], "error: seed=inf is not finite: use an integer >= 0"),
        ("visualize", ["seed=-1"], "error: seed=-1 is out of range: use an integer >= 0"),
        ("export", ["opset=inf"], "error: opset=inf is not finite: use an integer >= 7"),
    ],
)
def test_the_other_commands_refuse_a_value_outside_its_range_in_one_line(
    attention_ckpt: Path, tmp_path: Path, command: str, args: list[str], line: str
):
    from faults_support import command_cli, error_lines

    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    inputs = [f"inputs={image}"] if command in ("predict", "visualize") else []
    out = tmp_path / "out"
    where = {"predict": [], "export": [f"output={out}.onnx"]}.get(command, [f"output_dir={out}"])
    result = command_cli(
        command, [f"ckpt_path={attention_ckpt}", *inputs, *where, *args], cwd=tmp_path, timeout=180
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [error] = error_lines(result)
    assert error.startswith(line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
