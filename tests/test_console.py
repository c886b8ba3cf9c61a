"""What a person meets around the results: one log line per epoch with the run's ETA, a warning when a GPU
recipe starts on a CPU, a quiet console, evaluation sets in a class-balanced order, outputs beside the run,
figures that say what their colours mean, --help and make help."""

from __future__ import annotations

import logging
import re
import subprocess
import time
import warnings

import numpy as np
import pytest
import torch

from conftest import QUIET, ROOT, SYNTHETIC_SMALL, TINY_MODEL, compose_config, run_module
from vit_cifar.analysis import plots
from vit_cifar.checkpoints.loading import beside_run
from vit_cifar.config.entry import quiet_device_banner, quiet_library_noise
from vit_cifar.data.datamodule import interleaved_order
from vit_cifar.data.sources import resolve_source
from vit_cifar.errors import DataError

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

EPOCH_LINE = re.compile(
    r"epoch (\d+)/(\d+) \| train loss \d+\.\d{3} acc \d\.\d{4} \| val loss \d+\.\d{3} acc \d\.\d{4} "
    r"\| lr \d\.\de-\d\d \| \d+:\d\d:\d\d elapsed, ETA \d+:\d\d:\d\d for the run \(at \d\d:\d\d\)$"
)


def test_one_log_line_per_epoch_reaches_the_log_with_the_runs_eta(tmp_path, caplog):
    from vit_cifar.training.run import train

    short = ["aug=none", "trainer=cpu", "trainer.max_epochs=3", "scheduler.warmup_epochs=1", "test=false"]
    no_logs = ["~logger", "callbacks.lr_monitor=null"]
    cfg = compose_config([*TINY_MODEL, *QUIET, *SYNTHETIC_SMALL, *short, *no_logs], tmp_path)
    with caplog.at_level(logging.INFO, logger="vit_cifar.train"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "vit_cifar.train"]
    epochs = [EPOCH_LINE.match(line) for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3 and all(epochs), lines
    assert [(int(m[1]), int(m[2])) for m in epochs] == [(1, 3), (2, 3), (3, 3)]  # 1-based, of the run
    assert epochs[-1][0].count("ETA 0:00:00")  # nothing left after the last epoch


def _fit_with_a_slow_clock(monkeypatch, max_epochs: int) -> list[str]:
    """Fit a tiny ViT whose steps take 30 s by a fake clock (6 steps an epoch), stopping after 22 steps; the
    warnings EpochLog logged."""
    import lightning as L

    from vit_cifar.training.module import ClassifierModule
    from vit_cifar.training.monitoring import EpochLog

    clock = {"now": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])

    class SlowThenStop(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            clock["now"] += 30.0
            trainer.should_stop = trainer.should_stop or trainer.global_step >= 22

    module = ClassifierModule(
        net={"_target_": "vit_cifar.models.VisionTransformer", "embed_dim": 16, "depth": 1, "num_heads": 2},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05},
        scheduler={"warmup_epochs": 0, "min_lr": 1e-5},
    )
    data = torch.utils.data.TensorDataset(torch.randn(48, 3, 32, 32), torch.randint(0, 10, (48,)))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SlowThenStop(), EpochLog()],
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("vit_cifar.train").addHandler(handler)
    try:
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    finally:
        logging.getLogger("vit_cifar.train").removeHandler(handler)
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


def test_a_gpu_sized_run_on_a_cpu_says_how_long_and_what_to_run_instead(monkeypatch):
    """After its first 20 steps a CPU run estimates its length; past three hours it names the CPU recipes."""
    warned = _fit_with_a_slow_clock(monkeypatch, max_epochs=100)  # 600 steps of 30 s
    assert len(warned) == 1
    assert warned[0].startswith(
        "this run is sized for a GPU: on this CPU it would take about 5:00:00 (30.00 s"
    )
    assert "experiment=cpu_hour" in warned[0] and "experiment=smoke" in warned[0]


def test_a_run_that_fits_in_three_hours_is_not_warned_about(monkeypatch):
    assert _fit_with_a_slow_clock(monkeypatch, max_epochs=4) == []  # 24 steps of 30 s


def test_library_noise_is_dropped_and_real_warnings_stay():
    quiet_library_noise()
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    record = lambda msg: logging.LogRecord(tips.name, logging.INFO, __file__, 1, msg, None, None)
    assert not tips.filter(record("💡 Tip: For seamless cloud logging ..."))
    assert tips.filter(record("GPU available: False, used: False"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_noise()  # after simplefilter, as a command installs it after the libraries' imports
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1
        )
        warnings.warn("the learning rate is not finite", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["the learning rate is not finite"]


def test_the_device_banner_can_be_said_once_and_back_again():
    quiet_library_noise()
    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    record = logging.LogRecord(
        banner.name, logging.INFO, __file__, 1, "GPU available: False, used: False", None, None
    )
    try:
        quiet_device_banner()
        assert not banner.filter(record)
        quiet_device_banner(quiet=False)
        assert banner.filter(record)
    finally:
        quiet_device_banner(quiet=False)


def test_evaluation_sets_take_classes_in_turn_so_any_prefix_samples_every_class():
    labels = np.repeat(np.arange(10), 100)  # a class-sorted folder, as image folders decode
    order = interleaved_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation: nothing lost or repeated
    for prefix in (10, 64, 500):
        counts = np.bincount(labels[order[:prefix]], minlength=10)
        assert counts.max() - counts.min() <= 1
    assert not np.array_equal(order, interleaved_order(labels, seed=1))  # seeded
    assert np.array_equal(order, interleaved_order(labels, seed=0))
    uneven = np.array([0] * 7 + [1] * 2)
    assert np.bincount(uneven[interleaved_order(uneven, 0)[:4]]).tolist() == [2, 2]


def test_limited_test_runs_see_every_class(tmp_path):
    """limit_test_batches takes the first batches: in class turns they hold every class, not the first."""
    from vit_cifar.training.run import build_datamodule

    cfg = compose_config([*QUIET, *SYNTHETIC_SMALL, "aug=none"], tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    first_batch = datamodule.test_set.labels[:32]
    assert set(first_batch.tolist()) == set(range(10))
    assert set(datamodule.val_set.labels[:20].tolist()) == set(range(10))


def test_outputs_go_beside_the_checkpoints_run(tmp_path):
    run = tmp_path / "runs" / "12-00-00"
    assert beside_run(run / "checkpoints" / "last.ckpt", "evaluation") == run / "evaluation"
    assert beside_run(tmp_path / "model.ckpt", "attention") == tmp_path / "attention"


def test_evaluate_writes_into_the_checkpoints_run_and_says_where(tiny_run):
    result = run_module(
        "vit_cifar.evaluate",
        [f"ckpt_path={tiny_run / 'checkpoints' / 'last.ckpt'}", *QUIET[2:], *SYNTHETIC_SMALL[:4]],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tiny_run / "evaluation" / "metrics.json").is_file()
    assert (
        result.stdout.strip().splitlines()[-1]
        == f"wrote the figures, metrics.json and report.md to {tiny_run / 'evaluation'}"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.tar.gz", "missing.tar.gz: no such file: check the path to the archive"),
        (lambda p: (p / "half" / "train").mkdir(parents=True) or p / "half", "has train/ but no test/"),
    ],
)
def test_a_data_root_that_is_not_there_says_so(tmp_path, make, message):
    with pytest.raises(DataError, match=re.escape(message)):
        resolve_source("auto", make(tmp_path))


def test_per_class_colours_follow_the_models_own_accuracy_and_the_legend_lists_only_those_drawn(tmp_path):
    classes = [f"c{i}" for i in range(5)]
    weak = [0.30, 0.32, 0.10, 0.60, 0.31]  # a weak model: fixed 80/90% bands would paint all five red
    colours = [plots.accuracy_colour(a, overall=0.33) for a in weak]
    assert colours == [plots.BLUE, plots.BLUE, plots.RED, plots.GREEN, plots.BLUE]
    fig = plots.per_class_accuracy(classes, [0.30, 0.32, 0.31, 0.29, 0.30], 0.30, tmp_path / "p.png")
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["within 5 points of overall", "overall 30.00%"]  # no legend for colours not drawn
    assert (tmp_path / "p.png").stat().st_size > 0


def test_help_describes_the_command_with_examples_before_the_config():
    result = run_module("vit_cifar.train", ["--help"])
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("python -m vit_cifar.train [group=option ...] [key=value ...]")
    assert text.index("Examples") < text.index("== Config groups") < text.index("== Config (key=value")
    assert "experiment=cpu_hour" in text
    for command in ("vit_cifar.evaluate", "vit_cifar.visualize", "vit_cifar.predict"):
        result = run_module(command, ["--help"])
        assert result.returncode == 0 and result.stdout.startswith(f"python -m {command} ckpt_path=<file>")


def test_make_help_lists_the_common_targets():
    result = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    targets = re.findall(r"^  make (\S+)", result.stdout, flags=re.M)
    for target in ("train", "cpu-hour", "smoke", "evaluate", "visualize", "tensorboard", "test", "lint"):
        assert target in targets
