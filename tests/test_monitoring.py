"""Monitoring pieces on their own: the gradient norm, the figures, the hparams of a config.
The events they write in a real run are checked in test_sweep.py (one sweep serves both)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import compose_config
from vit_cifar.config.schema import validate_config
from vit_cifar.errors import ConfigError
from vit_cifar.training.monitoring import (
    GradNormMonitor,
    flat_hparams,
    predictions_figure,
)


class RecordingLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.logged.append((step, metrics))


def test_grad_norm_is_the_norm_clipping_sees_and_is_logged_every_n_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    logger = RecordingLogger()
    monitor = GradNormMonitor()
    for step in range(5):
        net.zero_grad()
        (net(torch.randn(4, 8)).square().sum() * 10).backward()
        trainer = SimpleNamespace(
            global_step=step, log_every_n_steps=2, sanity_checking=False, loggers=[logger]
        )
        monitor.on_before_optimizer_step(trainer, net, optimizer=None)
        before_clip = float(
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
        )  # returns the norm before
        if step % 2 == 0:
            assert logger.logged[-1] == (step, {"train/grad_norm": pytest.approx(before_clip)})
            assert before_clip > 1.0  # so the logged value is not the clipped one
    assert [step for step, _ in logger.logged] == [0, 2, 4]


def test_figure_settings_are_checked_before_a_run(tmp_path):
    cfg = compose_config(["callbacks.tensorboard_figures.every_n_epochs=0"], tmp_path)
    with pytest.raises(ConfigError, match="callbacks.tensorboard_figures.every_n_epochs=0 is out of range"):
        validate_config(cfg)
    validate_config(compose_config(["callbacks.tensorboard_figures=null"], tmp_path))  # switched off: fine


def test_the_prediction_grid_titles_each_image_with_its_prediction_and_marks_mistakes():
    images = torch.zeros(5, 3, 8, 8)
    fig = predictions_figure(
        images,
        torch.tensor([0, 1, 2, 0, 1]),
        torch.tensor([0, 1, 0, 0, 2]),
        ["cat", "dog", "frog"],
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
    )
    titles = [(text.get_text(), text.get_color()) for text in fig.axes[0].texts]
    assert titles == [
        ("cat", "green"),
        ("dog", "green"),
        ("frog\n(true: cat)", "red"),
        ("cat", "green"),
        ("dog\n(true: frog)", "red"),
    ]


def test_hparams_are_the_settings_that_matter_plus_the_command_line(tmp_path):
    cfg = compose_config(
        ["aug.mixup_alpha=0.8", "model.drop_path_rate=0.1", "seed=3", "optim.betas=[0.8,0.99]"], tmp_path
    )
    hp = flat_hparams(cfg)
    assert hp["aug.mixup_alpha"] == 0.8 and hp["model.drop_path_rate"] == 0.1 and hp["seed"] == 3
    assert hp["model"] == "VisionTransformer" and hp["optim"] == "AdamW"
    assert hp["optim.betas"] == "[0.8, 0.99]"  # not a key that matters by default, but given: so shown
    assert hp["trainer.max_epochs"] == 100 and hp["data.batch_size"] == 128 and hp["data.root"] == "data"
    assert hp["model.tokenizer"] == "patch" and hp["trainer.precision"] == "auto"
    assert "data.train_subset" not in hp and "experiment" not in hp  # unset: left out, never "None"
    assert not {"data.cache_dir", "data.mean", "trainer.default_root_dir"} & set(hp)
    assert not any(k.startswith(("paths", "callbacks", "logger")) or "_target_" in k for k in hp)
    assert isinstance(hp["model.drop_rate"], float) and isinstance(hp["model.depth"], int)
    assert len(hp) <= 25  # a table a person can read
    smoke = flat_hparams(compose_config(["experiment=smoke"], tmp_path))
    assert smoke["experiment"] == "smoke" and smoke["model.depth"] == 4


def test_the_run_clock_goes_on_from_a_checkpoint_only_when_training_resumes_from_it(tmp_path):
    """Testing a checkpoint restores its callbacks' states too (train() tests its selected checkpoint after
    fitting): the clock must not add that checkpoint's count to its own, which once doubled wall_s."""
    import time

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    from vit_cifar.training.callbacks import RunClock

    def trainer(clock: RunClock, epochs: int) -> L.Trainer:
        quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
        saved = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        return L.Trainer(max_epochs=epochs, callbacks=[clock, saved], default_root_dir=tmp_path, **quiet)

    started = time.perf_counter()
    clock = RunClock()
    first = trainer(clock, epochs=2)
    first.fit(BoringModel())
    first.test(BoringModel(), ckpt_path=first.checkpoint_callback.best_model_path, verbose=False)
    assert 0 < clock.elapsed_s() <= time.perf_counter() - started  # this process's time, once

    saved_s = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]["RunClock"]["wall_s"]
    resumed_clock = RunClock()
    resumed = trainer(resumed_clock, epochs=3)
    resumed_started = time.perf_counter()
    resumed.fit(BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert saved_s < resumed_clock.elapsed_s() <= saved_s + time.perf_counter() - resumed_started + 0.5
