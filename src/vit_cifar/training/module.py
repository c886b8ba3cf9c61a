"""The training system around any classifier network: loss, metrics, and the one place where ``optim`` and
``scheduler`` become the optimiser and its learning-rate schedule (:func:`build_optimization`)."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from functools import partial

import hydra
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import GradClipAlgorithmType
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from vit_cifar.checkpoints.loading import epochs_done
from vit_cifar.data.samplers import run_seed
from vit_cifar.devices import DeviceSpec, has_fused_kernel
from vit_cifar.errors import ConfigError
from vit_cifar.inference.engine import class_probs, tta_mode
from vit_cifar.models.registry import build_network
from vit_cifar.training.monitoring import budget_timer


class ClassifierModule(L.LightningModule):
    """Trains, validates and tests the classifier network of the ``net`` config (kept in every checkpoint to
    rebuild it), with the ``optim`` and ``scheduler`` configs (:func:`build_optimization`)."""

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict,
        label_smoothing: float = 0.0,
        tta: bool | str = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.eval_tta = tta_mode(tta)  # the views validation and test average (checked once, here)
        self.net = build_network(net)
        num_classes = self.net.num_classes
        # Takes hard labels (N,) or MixUp/CutMix class probabilities (N, C); smoothing applies to both. One loss
        # per image, for the loss metrics (see _step).
        self.loss_fn = partial(F.cross_entropy, label_smoothing=label_smoothing, reduction="none")
        # One metric object per stage, the loss's too: epoch values are sums over every image of every rank,
        # reduced once, so under DDP each image counts once. No argument validation (its torch.unique waits for
        # the GPU every step) and no NaN check (another wait; callbacks.FiniteLossGuard watches the loss).
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3)
        )
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.val_images, self.test_images = (SumMetric(nan_strategy="disable") for _ in range(2))
        self.run_config: dict | None = None
        # The device the device-dependent choices (fused AdamW) are made for; None: the one the module is on.
        # A test sets a CUDA description to run CUDA's choices on CPU (vit_cifar.devices.DeviceSpec).
        self.device_spec = None

    def setup(self, stage: str) -> None:
        # Lightning seeds every DDP rank alike, so all would draw the same dropout masks and MixUp/CutMix draws:
        # ranks above 0 reseed their generators from (seed, rank); rank 0 keeps the run's seed.
        if stage == "fit" and (rank := self.trainer.global_rank) > 0:
            seed = int(np.random.SeedSequence([run_seed(), rank]).generate_state(1)[0])
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the logits of a batch, its metrics logged."""
        x, target = batch
        # Evaluation runs eagerly: compiled, each evaluation batch shape and grad mode would compile a graph of
        # its own, minutes each on a notebook's CPUs, to save little at evaluation's large batches.
        with nullcontext() if stage == "train" else torch.compiler.set_stance("force_eager"):
            tta = self.eval_tta if stage != "train" else "none"
            # with test-time augmentation: its mean softmax as log-probabilities, for loss and accuracy
            logits = self(x) if tta == "none" else class_probs(self, x, tta).log()
        losses = self.loss_fn(logits, target)
        loss = losses.mean()
        # Under MixUp/CutMix the target is a mixture; accuracy counts the class with the largest share.
        hard = target.argmax(dim=1) if target.ndim == 2 else target
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        n = len(x)
        # Every image's loss: the epoch loss is a mean over images, not over batches of unequal sizes (a weight
        # would not do: nan_strategy="disable" makes weights ones). Ones made on the device: no wait for the GPU.
        accuracy.update(logits, hard)  # an epoch value only
        if stage == "train":  # forward: the step's own value too, for the step log
            mean_loss(losses.detach())
        else:
            mean_loss.update(losses.detach())
            getattr(self, f"{stage}_images").update(torch.ones_like(losses))
            self.log(f"{stage}/images", getattr(self, f"{stage}_images"), on_step=False, on_epoch=True)
        on_step = stage == "train"
        # Not prog_bar for the step value: Lightning would read it at every batch (a wait for the GPU);
        # callbacks.ProgressBar shows it every log_every_n_steps steps instead.
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
        self.log("epochs", float(epochs_done(self.trainer.current_epoch)), logger=False)

    def configure_optimizers(self):
        optimizer, scheduler, length = build_optimization(
            self.net,
            self.hparams.optimizer,
            self.hparams.scheduler,
            device=self.device_spec or self.device,
            total_steps=int(self.trainer.estimated_stepping_batches),
            max_epochs=self.trainer.max_epochs,
            clock=budget_timer(self.trainer),
        )
        counts = {group["name"]: sum(p.numel() for p in group["params"]) for group in optimizer.param_groups}
        groups = ", ".join(f"{n:,} {name}" for name, n in counts.items())
        self.print(
            f"{type(self.net).__name__}: {sum(counts.values()):,} parameters; {type(optimizer).__name__}: {groups} "
            f"(weight decay {optimizer.param_groups[0]['weight_decay']}); {length}"
        )
        # "name": the learning-rate monitor logs train/lr/<group name>, beside the other train/ scalars
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the true gradients with fused optimisers too: Lightning's mixed-precision plugin refuses to clip
        for an optimiser that unscales inside its step. For those this unscales first (``GradScaler.unscale_``
        also records any inf, which ``GradScaler.step`` hands the fused kernel: it skips an overflowing step on
        the device, no host sync) and clips here. Other optimisers go through Lightning."""
        if not gradient_clip_val:
            return
        if not any(group.get("fused") for group in optimizer.param_groups):
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
        if hasattr(self.trainer.datamodule, "classes"):  # None when fitting plain DataLoaders
            checkpoint["classes"] = list(self.trainer.datamodule.classes)
        if self.run_config is not None:
            checkpoint["config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_config = checkpoint.get("config")


# ------------------------------------------------------------------------------------------ optimiser and schedule


def build_optimization(
    net: nn.Module,
    optimizer: dict,
    scheduler: dict,
    device: DeviceSpec | torch.device,
    total_steps: int,
    max_epochs: int | None = None,
    clock: Timer | None = None,
) -> tuple[torch.optim.Optimizer, LambdaLR, str]:
    """The optimiser of the ``optim`` config, its per-step schedule of the ``scheduler`` config, and a line
    saying how long the schedule is (the values were checked by ``config.schema``).

    ``fused: null`` becomes true on CUDA when the class has a fused kernel: fused AdamW takes the GradScaler's
    ``found_inf`` on the device, so a 16-mixed step needs no host sync. ``device``: what that choice is made for.
    The schedule warms up linearly over ``warmup_epochs``, then a cosine reaches ``min_lr`` at the last step;
    with ``by: time`` the same shape follows the time ``clock`` (the Timer of ``trainer.max_time``) counts, so
    a run ends on its budget with its schedule complete."""
    kwargs = {key: value for key, value in optimizer.items() if not key.startswith("_")}
    optimizer_class = hydra.utils.get_class(optimizer["_target_"])
    lr, weight_decay = float(kwargs.pop("lr")), float(kwargs.pop("weight_decay", 0.0))
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if "fused" in kwargs and kwargs["fused"] is None:
        del kwargs["fused"]
        if device.type == "cuda" and has_fused_kernel(optimizer_class):
            kwargs["fused"] = True
    muon = optimizer_class.__name__ == "Muon"  # torch.optim.Muon: for the hidden matrices, AdamW for the rest
    groups = param_groups(net, weight_decay, matrices=muon)
    if muon and not groups[0]["params"]:
        raise ConfigError(f"optim=muon finds no 2-D hidden weights in {type(net).__name__}: use optim=adamw")
    built = MuonWithAdamW(groups, lr=lr, **kwargs) if muon else optimizer_class(groups, lr=lr, **kwargs)

    min_lr, decay = float(scheduler.get("min_lr", 0.0)), scheduler.get("decay", "cosine")
    if scheduler.get("by", "steps") == "time":
        budget_s = clock.time_elapsed() + clock.time_remaining()  # trainer.max_time, in seconds
        warmup_fraction = float(scheduler.get("warmup_fraction", 0.0))

        def lr_now(step: int) -> float:  # LambdaLR's step is ignored: the clock is the schedule
            return warmup_cosine_at(clock.time_elapsed() / budget_s, warmup_fraction, lr, min_lr, decay)

        length = f"{budget_s / 60:.1f} minutes of training by the clock, {warmup_fraction:.0%} of warmup"
    else:
        # warmup_epochs of the trainer's real steps per epoch, never past the run
        warmup_epochs = float(scheduler.get("warmup_epochs", 0))
        warmup = min(round(total_steps * warmup_epochs / max(1, max_epochs or 1)), max(total_steps - 1, 0))

        def lr_now(step: int) -> float:
            return warmup_cosine_lr(step, total_steps, warmup, lr, min_lr, decay)

        length = f"{total_steps} steps, {warmup} of warmup"
    return built, LambdaLR(built, lambda step: lr_now(step) / lr), length


def param_groups(model: nn.Module, weight_decay: float, matrices: bool = False) -> list[dict]:
    """Layer weights decay; biases, norm parameters (every 1-D parameter: normalisation layers scale and shift
    activations, and decaying them only fights the normalisation) and ``no_weight_decay()`` names do not.
    ``matrices``: the 2-D weights of the hidden layers form a first group, ``matrix``, for Muon; the output layer
    (the model's last ``nn.Linear``, the ViT's ``head`` or the ResNet's ``fc``) is not hidden."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    output_layer = {id(param) for param in linears[-1].parameters()} if linears else set()
    matrix, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            hidden = matrices and param.ndim == 2 and id(param) not in output_layer
            (no_decay if param.ndim <= 1 or name in skip else matrix if hidden else decay).append(param)
    # Named, so that the learning-rate monitor logs train/lr/decay and /no_decay (and /matrix), not pg1 and pg2.
    muon = [{"params": matrix, "weight_decay": weight_decay, "name": "matrix"}] if matrices else []
    return muon + [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the ``matrix`` group and AdamW for the others (embeddings, convolutions, the head,
    norms), as Muon is meant to be used, behind one optimiser whose ``param_groups`` are the two optimisers' own:
    the schedule and the learning-rate monitor see them all. With ``adjust_lr_fn: match_rms_adamw`` Muon's
    updates have AdamW's size, so one ``lr`` and ``weight_decay`` serve both."""

    def __init__(self, groups, lr, betas=(0.9, 0.999), eps=1e-8, **muon_kwargs) -> None:
        self.muon = torch.optim.Muon(groups[:1], lr=lr, **muon_kwargs)
        self.adamw = torch.optim.AdamW(groups[1:], lr=lr, betas=betas, eps=eps)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # loading made new group dicts


def warmup_cosine_lr(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float, decay: str = "cosine"
) -> float:
    """Learning rate at step ``step`` (0-based): a linear warmup reaching ``peak_lr`` at step ``warmup_steps - 1``,
    then a cosine from ``peak_lr`` down to exactly ``min_lr`` at the last step, ``total_steps - 1``."""
    if total_steps <= 1:
        return peak_lr
    warmup_steps = min(warmup_steps, total_steps - 1)
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + (peak_lr - min_lr) * remaining_share(progress, decay)


def remaining_share(progress: float, decay: str) -> float:
    """The share of ``peak_lr - min_lr`` left at ``progress`` in [0, 1] of the decay: ``cosine`` (the seed's) or
    ``linear`` to the floor (budgeted training: best when the budget is known, as a clock's is)."""
    return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_at(
    progress: float, warmup_fraction: float, peak_lr: float, min_lr: float, decay: str = "cosine"
) -> float:
    """Learning rate at ``progress`` in [0, 1] of a wall-clock budget: a linear warmup from ``min_lr`` over
    ``warmup_fraction``, then a cosine down to exactly ``min_lr`` at 1 (and past it)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return min_lr + (peak_lr - min_lr) * progress / warmup_fraction
    rest = 1.0 - warmup_fraction
    decayed = (progress - warmup_fraction) / rest if rest > 0 else 1.0
    return min_lr + (peak_lr - min_lr) * remaining_share(decayed, decay)
