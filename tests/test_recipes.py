"""The recipes beyond the seed: the ResNet-18 baseline, EMA of the weights, CIFAR-100, and the new experiment
configs through the real command line (one job and a multi-seed sweep)."""

import csv
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config, run_module, write_image_folder
from vit_cifar import devices
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.config.entry import run_cli
from vit_cifar.config.schema import validate_config
from vit_cifar.errors import ConfigError
from vit_cifar.models import ResNet18
from vit_cifar.models.registry import build_network
from vit_cifar.training.callbacks import EMA
from vit_cifar.training.module import param_groups
from vit_cifar.training.run import build_datamodule, train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

# ----------------------------------------------------------------------------------------------- ResNet-18


def test_resnet18_is_the_cifar_variant_with_the_baseline_parameter_count(tmp_path):
    model = ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.num_classes == 10
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    stem = model.relu(model.bn1(model.conv1(x)))
    assert stem.shape == (2, 64, 32, 32)  # 3x3 stride-1 stem and no max-pool: full resolution into layer1
    assert model.layer4(model.layer3(model.layer2(model.layer1(stem)))).shape == (2, 512, 4, 4)
    with pytest.raises(ConfigError, match="model.num_classes=0 is out of range: use an integer >= 1"):
        validate_config(compose_config(["model=resnet18", "model.num_classes=0"], tmp_path))  # the schema's


def test_resnet18_config_follows_the_data_and_decays_conv_and_linear_weights_only(tmp_path):
    cfg = compose_config(["model=resnet18", "data=cifar100"], tmp_path)
    model = build_network(OmegaConf.to_container(cfg.model, resolve=True))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    decay, plain = param_groups(model, 5e-4)
    bn_params = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in plain["params"]} == {id(p) for p in [*bn_params, model.fc.bias]}
    assert all(p.ndim in (2, 4) for p in decay["params"])  # conv kernels and the classifier's weight


# ----------------------------------------------------------------------------------------------- EMA


class _Scalar(L.LightningModule):
    """One weight, loss = w: plain SGD with lr 1 moves it by exactly -1 per step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        return self.w * 1.0

    def validation_step(self, batch, batch_idx):
        self.seen["val"] = self.w.item()

    def test_step(self, batch, batch_idx):
        self.seen["test"] = self.w.item()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _scalar_trainer(ckpt_dir, epochs=1):
    callbacks = [EMA(decay=0.5), ModelCheckpoint(dirpath=ckpt_dir, save_last=True)]
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def _batches(n):
    return DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=1)


def test_ema_matches_hand_computed_averages_in_validation_checkpoint_and_test(tmp_path):
    # Weights after steps 1, 2, 3: -1, -2, -3. The first step copies, then ema = 0.5 * ema + 0.5 * w:
    # -1, then 0.5 * -1 + 0.5 * -2 = -1.5, then 0.5 * -1.5 + 0.5 * -3 = -2.25.
    model, trainer = _Scalar(), _scalar_trainer(tmp_path)
    trainer.fit(model, _batches(3), _batches(1))
    assert model.seen["val"] == -2.25  # validation ran with the average
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["state_dict"]["w"].item() == -2.25  # what evaluation loads
    assert saved["current_model_state"]["w"].item() == -3.0  # the raw weights, for resuming
    trainer.test(model, _batches(1), ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert model.seen["test"] == -2.25  # the fitted trainer tests the average, not current_model_state

    # Resuming restores both: three more steps from w = -3 and ema = -2.25.
    resumed, last = _Scalar(), tmp_path / "last.ckpt"
    _scalar_trainer(tmp_path / "resumed", epochs=2).fit(
        resumed, _batches(3), _batches(1), ckpt_path=last, weights_only=True
    )
    ema = -2.25
    for w in (-4.0, -5.0, -6.0):
        ema = 0.5 * ema + 0.5 * w
    assert resumed.seen["val"] == ema == -5.03125


def _mean_loss(net, dataset):
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return F.cross_entropy(net(x), dataset.labels).item()


def test_training_with_ema_validates_selects_and_tests_the_averaged_weights(tmp_path):
    # A constant learning rate, so that the raw weights and their average stay clearly apart.
    cfg = compose_config(
        [
            *SYNTHETIC_SMALL,
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
            "trainer.max_epochs=2",
            "scheduler.warmup_epochs=0",
            "scheduler.min_lr=3e-3",
            "aug=none",
            "optim.lr=3e-3",
            "callbacks=ema",
            "callbacks.ema.decay=0.8",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    tested = load_classifier(metrics["checkpoint"])  # the best checkpoint's state_dict: the average
    assert metrics["test_loss"] == pytest.approx(_mean_loss(tested.net, dm.test_set), rel=1e-4)

    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        val_losses = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    averaged = load_classifier(tmp_path / "checkpoints" / "last.ckpt").net
    raw = build_network(tested.net_config)
    raw.load_state_dict({k.removeprefix("net."): v for k, v in last["current_model_state"].items()})
    raw.eval()
    assert val_losses[-1] == pytest.approx(_mean_loss(averaged, dm.val_set), rel=1e-4)
    assert abs(val_losses[-1] - _mean_loss(raw, dm.val_set)) > 1e-2  # not the raw weights


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "data.repeated_aug=0",
            "error: data.repeated_aug=0 is out of range: use an integer >= 1 (1: off; DeiT: 3)",
        ),
        (
            "callbacks.ema.decay=1.5",
            "error: callbacks.ema.decay=1.5 is out of range: use a number in [0, 1) (0.9995 averages ~2,000 steps)",
        ),
    ],
)
def test_bad_recipe_values_stop_with_one_line_and_exit_code_2(tmp_path, capsys, override, line):
    """Values checked in constructors that Hydra instantiates still end in one line, not Hydra's wrapper."""
    overrides = [*SYNTHETIC_SMALL, *TINY_MODEL, *QUIET, "callbacks=ema", override, "debug=fdr"]
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(SystemExit) as stop:
        run_cli(train, cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line


# ----------------------------------------------------------------------------------------------- CIFAR-100


def test_cifar100_config_runs_100_classes_from_the_synthetic_source(tmp_path):
    cfg = compose_config(
        [
            "data=cifar100",
            "data.source=synthetic",
            "data.synthetic={train_per_class:3,test_per_class:1}",
            "data.val_size=100",
            "data.batch_size=32",
            "debug=fdr",
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
        ],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    assert dm.mean == (0.5071, 0.4865, 0.4409) and dm.num_classes == 100
    metrics = train(cfg)
    net = build_network(OmegaConf.to_container(cfg.model, resolve=True))
    assert net.head.out_features == 100 and metrics["params"] == sum(p.numel() for p in net.parameters())
    assert metrics["test_images"] == 100 and 0.0 <= metrics["test_acc"] <= 1.0


def test_cifar100_config_reads_an_image_folder_with_100_classes(tmp_path):
    classes = [f"class{i:03d}" for i in range(100)]
    root = write_image_folder(tmp_path / "images", classes=classes, per_split=(2, 1))
    cfg = compose_config(
        [
            "data=cifar100",
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.val_size=0",
            "data.batch_size=32",
            "debug=fdr",
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
        ],
        tmp_path / "run",
    )
    dm = build_datamodule(cfg)
    assert dm.source == "folder" and dm.classes == classes
    metrics = train(cfg)
    assert metrics["data"] == f"image folder {root}" and metrics["test_images"] == 100
    assert 0.0 <= metrics["test_acc"] <= 1.0


# ----------------------------------------------------------------------------------------------- the CLI

FAST_DATA = [
    "data=synthetic",
    "data.synthetic.train_per_class=4",
    "data.synthetic.test_per_class=2",
    "data.val_size=20",
    "data.batch_size=8",
    *QUIET,
]


def test_vit_best_runs_through_the_cli_with_the_seed_architecture(tmp_path):
    args = ["experiment=vit_best", "debug=fdr", "data.repeated_aug=3", f"hydra.run.dir={tmp_path}"]
    result = run_module("vit_cifar.train", [*args, *FAST_DATA])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"] == 5_356_234 and 0.0 <= metrics["test_acc"] <= 1.0
    cfg = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert cfg.model.drop_path_rate == 0.1 and cfg.callbacks.ema.decay == 0.9995
    assert (cfg.aug.random_crop_padding, cfg.aug.hflip_p, cfg.trainer.max_epochs) == (4, 0.5, 100)


def test_resnet18_baseline_runs_as_a_multi_seed_sweep(tmp_path):
    result = run_module(
        "vit_cifar.train",
        [
            "-m",
            "seed=0,1",
            "experiment=resnet18_baseline",
            "debug=fdr",
            *FAST_DATA,
            f"hydra.sweep.dir={tmp_path}",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, seed in (("0", 0), ("1", 1)):  # one folder and one metrics.json per job
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["params"] == 11_173_962
        cfg = OmegaConf.load(tmp_path / job / ".hydra" / "config.yaml")
        assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim.nesterov and cfg.optim.lr == 0.1
        assert cfg.trainer.gradient_clip_val is None and cfg.scheduler.warmup_epochs == 0


def test_cpu_hour_composes_builds_a_conv_vit_and_trains_a_few_steps(tmp_path):
    """experiment=cpu_hour through the CLI: the conv-tokenizer ViT, the clock-driven schedule against
    trainer.max_time, bf16 autocast on CPU and the in-process batch augmentation, for a few steps."""
    args = ["experiment=cpu_hour", "+trainer.max_steps=3", f"hydra.run.dir={tmp_path}", *FAST_DATA]
    result = run_module("vit_cifar.train", args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"] == 878_282 and metrics["precision"] == devices.cpu_precision()
    assert 0.0 <= metrics["test_acc"] <= 1.0 and metrics["test_images"] == 20
    assert "55.0 minutes of training by the clock, 3% of warmup" in result.stdout
    assert (
        "MuonWithAdamW: 786,432 matrix, 76,736 decay, 15,114 no_decay" in result.stdout
    )  # the blocks' matrices
    cfg = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert cfg.model.tokenizer == "conv" and cfg.scheduler.by == "time" and cfg.data.device_aug
    recipe = compose_config(["experiment=cpu_hour"], tmp_path)  # as a user runs it: all images, final step
    assert recipe.data.val_size == 0 and recipe.trainer.max_time == "00:00:55:00" and recipe.test
    # what the test uses is part of the recipe: flip TTA; and the schedule decays linearly to zero on the clock
    assert recipe.tta == "flip_shift" and recipe.scheduler.decay == "linear" and recipe.scheduler.min_lr == 0
    # ~40 epochs in the hour overfit without them (proxies 5, docs/recipes.md)
    assert recipe.model.drop_path_rate == 0.1 and recipe.aug.erasing_p == 0.25


@pytest.mark.parametrize(
    ("bf16", "precision"),
    [
        ("AMX", "bf16-mixed"),
        ("AVX512-BF16", "bf16-mixed"),
        ("BF16", "bf16-mixed"),
        ("emulated", "32-true"),
        ("unknown", "32-true"),
    ],
)
def test_cpu_hour_trains_in_bf16_only_where_the_cpu_multiplies_it_natively(
    tmp_path, monkeypatch, bf16, precision
):
    monkeypatch.setattr(devices, "cpu_bf16", lambda: bf16)
    cfg = compose_config(["experiment=cpu_hour"], tmp_path)
    assert cfg.trainer.precision == precision
    validate_config(cfg)  # the resolved value passes the pre-flight
    other = "32-true" if precision == "bf16-mixed" else "bf16-mixed"
    asked = compose_config(["experiment=cpu_hour", f"trainer.precision={other}"], tmp_path)
    assert asked.trainer.precision == other  # a precision asked for on the command line is kept
