"""The speed switches: compile, matmul precision and fused AdamW are config values reaching their code."""

import pytest
import torch

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from vit_cifar.config.schema import validate_config
from vit_cifar.devices import DeviceSpec, resolve_compile
from vit_cifar.errors import ConfigError
from vit_cifar.training.module import build_optimization
from vit_cifar.training.run import train

CPU, CUDA = DeviceSpec("cpu"), DeviceSpec.cuda(9, 0)


@pytest.fixture(autouse=True)
def _restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_the_switches_are_config_values(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.compile == "auto" and cfg.matmul_precision == "high"
    assert cfg.optim.fused is None
    cfg = compose_config(["compile=true", "matmul_precision=medium", "optim.fused=false"], tmp_path)
    assert cfg.compile is True and cfg.matmul_precision == "medium"
    assert cfg.optim.fused is False


def test_compile_auto_compiles_on_cuda_only():
    assert resolve_compile("auto", CPU) is False and resolve_compile("auto", CUDA) is True
    # from compute capability 8.0 only: a T4's (7.5) float16 Inductor has never run; asked for, it compiles
    t4 = DeviceSpec.cuda(7, 5)
    assert resolve_compile("auto", t4) is False and resolve_compile(True, t4) is True
    assert resolve_compile("auto", DeviceSpec.cuda(8, 0)) is True
    assert (
        resolve_compile("auto", DeviceSpec.cuda(9, 0, triton=False)) is False
    )  # Inductor needs Triton there
    assert resolve_compile(True, CPU) is True and resolve_compile(False, CUDA) is False


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records the ``fused`` the optimiser builder gave it (and builds without it, on CPU)."""

    given: list = []

    def __init__(self, params, **kwargs) -> None:
        RecordingAdamW.given.append(kwargs.pop("fused", "not passed"))
        super().__init__(params, **kwargs)


def _fused(fused, device: DeviceSpec):
    RecordingAdamW.given.clear()
    optim = {"_target_": "test_speed.RecordingAdamW", "lr": 1e-3, "fused": fused}
    build_optimization(torch.nn.Linear(2, 2), optim, {}, device, total_steps=1)
    return RecordingAdamW.given[0]


def test_fused_adamw_defaults_to_the_fused_kernel_on_cuda_only():
    assert _fused(None, CUDA) is True
    assert _fused(None, CPU) == "not passed"  # PyTorch's default
    assert _fused(False, CUDA) is False


def test_compile_and_fused_reach_training(tmp_path, monkeypatch):
    compiled, fused, names = [], [], []
    real_compile = torch.nn.Module.compile

    def spy_compile(self, *args, **kwargs):
        compiled.append((type(self).__name__, kwargs))
        names.append([n for n, _ in self.named_parameters()])
        real_compile(self, *args, **kwargs)
        names.append([n for n, _ in self.named_parameters()])

    monkeypatch.setattr(torch.nn.Module, "compile", spy_compile)

    class SpyAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            fused.append(kwargs.get("fused"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", SpyAdamW)
    cfg = compose_config(
        [
            *SYNTHETIC_SMALL,
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
            "debug=fdr",
            "compile=true",
            "compile_backend=eager",  # Dynamo's capture without code generation: seconds on CPU
            "optim.fused=true",
            "matmul_precision=medium",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert names[0] == names[1]  # compiled in place: checkpoints keep the eager names
    # static shapes, so that a shorter batch gets a graph of its own instead of making the training graph dynamic
    assert compiled == [("VisionTransformer", {"backend": "eager", "dynamic": False})]
    assert fused == [True]  # fused AdamW runs on CPU too (torch >= 2.4)
    # what ran, not what was asked: every forward call (train, validation, test) ran compiled
    assert metrics["compile"] is True and metrics["eager_calls"] == 0
    assert metrics["matmul_precision"] == "medium" and torch.get_float32_matmul_precision() == "medium"
    assert metrics["compile_backend"] == "eager"


def test_the_config_check_knows_the_switches(tmp_path):
    with pytest.raises(ConfigError, match=r"^matmul_precision='fast' is unknown: use one of highest, high"):
        validate_config(compose_config(["matmul_precision=fast"], tmp_path))
    with pytest.raises(
        ConfigError, match=r"^data.device_aug='sometimes' is unknown: use one of auto, true, false"
    ):
        validate_config(compose_config(["data.device_aug=sometimes"], tmp_path))


def test_a_bad_switch_stops_with_one_line_naming_the_key(tmp_path):
    cfg = compose_config(
        [*SYNTHETIC_SMALL, *TINY_MODEL, *QUIET, "trainer=cpu", "debug=fdr", "compile=sometimes"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"^compile='sometimes' is unknown: use one of auto, true, false$"):
        train(cfg)
