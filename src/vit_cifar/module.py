"""The training system around any classifier network: loss, metrics, AdamW parameter groups, warmup-cosine."""

from __future__ import annotations

import importlib
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from vit_cifar.errors import ConfigError
from vit_cifar.monitoring import budget_timer
from vit_cifar.optim import param_groups, warmup_cosine_at, warmup_cosine_lr, warmup_steps_for
from vit_cifar.speed import optimizer_kwargs_for

# Checkpoints name the classes they build; only these packages may be named, so a checkpoint cannot run code.
NETWORK_PACKAGES = ("vit_cifar.models.",)
OPTIMIZER_PACKAGES = ("torch.optim.",)


def locate(target: str, allowed: tuple[str, ...], key: str) -> type:
    """The class at dotted path ``target``, if it lies in one of the ``allowed`` packages."""
    if not isinstance(target, str) or not target.startswith(allowed):
        raise ConfigError(
            f"{key}._target_={target!r} is not allowed: it must be a class in {', '.join(allowed)}"
        )
    module_name, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{key}._target_={target} does not exist") from None


def build_network(cfg: dict) -> nn.Module:
    """Instantiate a network from its config dict (``_target_`` plus constructor arguments)."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return locate(cfg.get("_target_"), NETWORK_PACKAGES, "model")(**kwargs)


class ClassifierModule(L.LightningModule):
    """Trains, validates and tests any classifier network built from a config dict.

    Args:
        net: the network's config (``_target_`` and arguments), kept in every checkpoint to rebuild it.
        optimizer: the optimiser's config: ``_target_`` (a ``torch.optim`` class), ``lr``, ``weight_decay``
            (applied to layer weights only, see :func:`vit_cifar.optim.param_groups`) and its other arguments.
        scheduler: ``warmup_epochs`` and ``min_lr`` of the per-step warmup-cosine schedule; with ``by: time``
            the same shape is driven by the training time spent against ``trainer.max_time`` (warmup over
            ``warmup_fraction`` of it), so a run ends on its budget with its schedule complete.
        label_smoothing: label smoothing of the cross-entropy, applied on top of MixUp/CutMix targets.
    """

    def __init__(self, net: dict, optimizer: dict, scheduler: dict, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"aug.label_smoothing={label_smoothing} is not a probability in [0, 1)")
        self.save_hyperparameters()
        self.net = build_network(net)
        self.optimizer_class = locate(optimizer.get("_target_"), OPTIMIZER_PACKAGES, "optim")
        num_classes = self.net.num_classes
        # Takes hard labels (N,) or MixUp/CutMix class probabilities (N, C); smoothing applies to both.
        self.loss_fn = partial(F.cross_entropy, label_smoothing=label_smoothing)
        # One metric object per stage, so their states never mix.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.classes: list[str] | None = None
        self.run_config: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str, metric: MulticlassAccuracy) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the logits of a batch; logs the stage's loss and accuracy."""
        x, target = batch
        logits = self(x)
        loss = self.loss_fn(logits, target)
        # Under MixUp/CutMix the target is a mixture; accuracy counts the class with the largest share.
        hard = target.argmax(dim=1) if target.ndim == 2 else target
        metric(logits, hard)
        on_step = stage == "train"
        # sync_dist: under DDP the logged loss is the mean over all ranks (one scalar all-reduce per step).
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=len(x),
        )
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)[0]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val", self.val_acc)[1]  # the logits, for callbacks (monitoring's figures)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self):
        opt_cfg = {k: v for k, v in self.hparams.optimizer.items() if not k.startswith("_")}
        lr = float(opt_cfg.pop("lr"))
        weight_decay = float(opt_cfg.pop("weight_decay", 0.0))
        if "betas" in opt_cfg:
            opt_cfg["betas"] = tuple(opt_cfg["betas"])
        opt_cfg = optimizer_kwargs_for(self.optimizer_class, opt_cfg, self.device)  # fused: null -> on CUDA
        groups = param_groups(self.net, weight_decay)
        optimizer = self.optimizer_class(groups, lr=lr, **opt_cfg)

        min_lr = float(self.hparams.scheduler.get("min_lr", 0.0))
        if self.hparams.scheduler.get("by", "steps") == "time":
            timer = budget_timer(self.trainer)
            if timer is None:
                raise ConfigError(
                    "scheduler.by=time needs a time budget: set trainer.max_time (e.g. 00:00:55:00, DD:HH:MM:SS)"
                )
            if self.trainer.world_size > 1:
                raise ConfigError(
                    "scheduler.by=time follows one process's clock: use scheduler.by=steps with several processes"
                )
            budget_s = timer.time_elapsed() + timer.time_remaining()  # trainer.max_time, in seconds
            warmup_fraction = float(self.hparams.scheduler.get("warmup_fraction", 0.0))

            def lr_now(step: int) -> float:  # LambdaLR's step is ignored: the clock is the schedule
                return warmup_cosine_at(timer.time_elapsed() / budget_s, warmup_fraction, lr, min_lr)

            length = f"{budget_s / 60:.1f} minutes of training by the clock, {warmup_fraction:.0%} of warmup"
        else:
            total = int(self.trainer.estimated_stepping_batches)
            max_epochs = max(1, self.trainer.max_epochs or 1)
            warmup = warmup_steps_for(
                total, max_epochs, float(self.hparams.scheduler.get("warmup_epochs", 0))
            )
            lr_now = partial(
                warmup_cosine_lr, total_steps=total, warmup_steps=warmup, peak_lr=lr, min_lr=min_lr
            )
            length = f"{total} steps, {warmup} of warmup"
        scheduler = LambdaLR(optimizer, lambda step: lr_now(step) / lr)
        n_decay, n_plain = (sum(p.numel() for p in g["params"]) for g in groups)
        self.print(
            f"{type(self.net).__name__}: {n_decay + n_plain:,} parameters; optimiser: {n_decay:,} with weight "
            f"decay {weight_decay}, {n_plain:,} without; {length}"
        )
        # "name": the learning-rate monitor logs train/lr/decay and train/lr/no_decay, beside the other train/ scalars
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What evaluation needs beside the weights: class names and the whole run configuration.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "classes"):
            checkpoint["classes"] = list(datamodule.classes)
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.classes = checkpoint.get("classes")
        self.run_config = checkpoint.get("config")
