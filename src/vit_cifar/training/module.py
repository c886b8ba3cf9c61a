"""The training system around any classifier network: loss, metrics, AdamW parameter groups, warmup-cosine."""

from __future__ import annotations

import random
from contextlib import nullcontext
from functools import partial

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from vit_cifar.config.schema import NO_TIME_BUDGET, check_key
from vit_cifar.data.samplers import run_seed
from vit_cifar.errors import ConfigError
from vit_cifar.models.registry import build_network
from vit_cifar.training.monitoring import budget_timer, time_budget_s
from vit_cifar.training.optim import param_groups, warmup_cosine_at, warmup_cosine_lr, warmup_steps_for
from vit_cifar.training.speed import optimizer_kwargs_for


class ClassifierModule(L.LightningModule):
    """Trains, validates and tests any classifier network built from a config dict.

    Args:
        net: the network's config (``_target_`` and arguments), kept in every checkpoint to rebuild it.
        optimizer: the optimiser's config: ``_target_`` (a ``torch.optim`` class), ``lr``, ``weight_decay``
            (applied to layer weights only, see :func:`vit_cifar.training.optim.param_groups`) and its other arguments.
        scheduler: ``warmup_epochs`` and ``min_lr`` of the per-step warmup-cosine schedule; with ``by: time``
            the same shape is driven by the training time spent against ``trainer.max_time`` (warmup over
            ``warmup_fraction`` of it), so a run ends on its budget with its schedule complete.
        label_smoothing: label smoothing of the cross-entropy, applied on top of MixUp/CutMix targets.
    """

    def __init__(self, net: dict, optimizer: dict, scheduler: dict, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_key("aug.label_smoothing", label_smoothing)
        self.save_hyperparameters()
        self.net = build_network(net)
        self.optimizer_class = get_class(
            optimizer["_target_"]
        )  # a class of torch.optim: config.schema checks it
        num_classes = self.net.num_classes
        # Takes hard labels (N,) or MixUp/CutMix class probabilities (N, C); smoothing applies to both. One loss
        # per image, for the loss metrics (see _step).
        self.loss_fn = partial(F.cross_entropy, label_smoothing=label_smoothing, reduction="none")
        # One metric object per stage, so their states never mix. Metric objects (not tensors) for the loss
        # too: their epoch values are sums over every image of every rank, reduced once at the epoch's end, so
        # under DDP each image counts once, whatever share each rank had. No argument validation (its
        # torch.unique on the targets waits for the GPU every step) and no NaN check on the loss (another wait;
        # vit_cifar.training.callbacks.FiniteLossGuard watches the loss): the inputs are ours.
        self.train_acc, self.val_acc, self.test_acc = (_accuracy(num_classes) for _ in range(3))
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.val_images, self.test_images = (
            SumMetric(nan_strategy="disable"),
            SumMetric(nan_strategy="disable"),
        )
        self.run_config: dict | None = None
        # The device the device-dependent choices (fused AdamW) are made for; None: the one the module is on.
        # A test sets a CUDA description to run CUDA's choices on CPU (vit_cifar.devices.DeviceSpec).
        self.device_spec = None

    def setup(self, stage: str) -> None:
        if stage == "fit":
            seed_rank_generators(self.trainer.global_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the logits of a batch; logs the stage's loss and accuracy (and, for validation and
        test, how many images were counted)."""
        x, target = batch
        # Evaluation runs eagerly: compiled, every evaluation batch shape (the last batch of each split and rank)
        # and grad mode (validation's no_grad, test's inference_mode) would compile a graph of its own, minutes
        # each on a notebook's CPUs, to save little at evaluation's large batches.
        with nullcontext() if stage == "train" else torch.compiler.set_stance("force_eager"):
            logits = self(x)
        losses = self.loss_fn(logits, target)
        loss = losses.mean()
        # Under MixUp/CutMix the target is a mixture; accuracy counts the class with the largest share.
        hard = target.argmax(dim=1) if target.ndim == 2 else target
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        n = len(x)
        # Every image's loss, so that the epoch loss is a mean over images, not over batches of unequal sizes. Not
        # the batch mean with a weight: nan_strategy="disable" replaces weights by ones. The image count as ones
        # made on the device (a Python number would be copied from the host, a wait for the GPU).
        if stage == "train":  # the step's own values for the step logs, the epoch's mean at its end
            accuracy(logits, hard)
            mean_loss(losses.detach())
        else:  # epoch values only
            accuracy.update(logits, hard)
            mean_loss.update(losses.detach())
            getattr(self, f"{stage}_images").update(torch.ones_like(losses))
            self.log(f"{stage}/images", getattr(self, f"{stage}_images"), on_step=False, on_epoch=True)
        on_step = stage == "train"
        # Not prog_bar for the step value: Lightning converts every step value shown in the progress bar to a
        # Python number at every batch (a wait for the GPU); vit_cifar.training.callbacks.ProgressBar shows it instead,
        # read every log_every_n_steps steps.
        self.log(
            f"{stage}/loss", mean_loss, on_step=on_step, on_epoch=True, prog_bar=not on_step, batch_size=n
        )
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")[1]  # the logits, for callbacks (monitoring's figures)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        # The epochs done, as a callback metric: under ddp_notebook the ranks train in forked processes and the
        # kernel's trainer gets back their callback metrics, not their loop counters (current_epoch stays 0).
        self.log("epochs", float(self.current_epoch + 1), logger=False)

    def configure_optimizers(self):
        opt_cfg = {k: v for k, v in self.hparams.optimizer.items() if not k.startswith("_")}
        lr = float(opt_cfg.pop("lr"))
        weight_decay = float(opt_cfg.pop("weight_decay", 0.0))
        if "betas" in opt_cfg:
            opt_cfg["betas"] = tuple(opt_cfg["betas"])
        opt_cfg = optimizer_kwargs_for(self.optimizer_class, opt_cfg, self.device_spec or self.device)
        groups = param_groups(self.net, weight_decay)
        optimizer = self.optimizer_class(groups, lr=lr, **opt_cfg)

        min_lr = float(self.hparams.scheduler.get("min_lr", 0.0))
        if self.hparams.scheduler.get("by", "steps") == "time":
            timer = budget_timer(self.trainer)
            if timer is None:
                raise ConfigError(NO_TIME_BUDGET)
            if self.trainer.world_size > 1:
                raise ConfigError(
                    "scheduler.by=time follows one process's clock: use scheduler.by=steps with several processes"
                )
            budget_s = time_budget_s(self.trainer)  # trainer.max_time, in seconds
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

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the true gradients, in every precision and with fused optimisers too.

        Lightning clips through its precision plugin, whose mixed-precision plugin refuses any optimiser that
        unscales inside its step (fused AdamW), in bf16-mixed as well as 16-mixed, because under 16-mixed it
        leaves such an optimiser's gradients scaled. For those this unscales them first (16-mixed:
        ``GradScaler.unscale_``, which also records whether any is infinite) and clips them here;
        ``GradScaler.step`` then hands the fused kernel that record and no scale, and the kernel skips an
        overflowing step on the device: no host synchronisation. Other optimisers go through Lightning."""
        if not gradient_clip_val:
            return
        if not is_fused(optimizer):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == GradClipAlgorithmType.VALUE:  # Lightning passes the enum
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What evaluation needs beside the weights: class names and the whole run configuration.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "classes"):
            checkpoint["classes"] = list(datamodule.classes)
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_config = checkpoint.get("config")


def seed_rank_generators(rank: int) -> None:
    """Lightning seeds every DDP rank alike (``seed_everything``, and again as the processes start), so all
    ranks would draw the same dropout masks and MixUp/CutMix parameters. Ranks above 0 reseed Python's, NumPy's
    and torch's generators from (seed, rank); rank 0 keeps the run's seed, so one process draws as it did."""
    if rank > 0:
        seed = int(np.random.SeedSequence([run_seed(), rank]).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def _accuracy(num_classes: int) -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes, average="micro", validate_args=False)


def is_fused(optimizer) -> bool:
    """Whether ``optimizer`` runs a fused kernel (which unscales 16-mixed gradients inside its step)."""
    return any(group.get("fused") for group in optimizer.param_groups)
