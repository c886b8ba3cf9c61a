"""TensorBoard monitoring beyond the scalars the module logs: the gradient norm, a confusion matrix and a grid
of validation predictions every few epochs, and the hparams table with the run's final metrics.

What is where (``tensorboard --logdir outputs/``; docs/sweeps.md):
  train/loss_step, lr-AdamW/pg1 (LearningRateMonitor), train/grad_norm    every trainer.log_every_n_steps
  train/loss_epoch, train/acc, val/loss, val/acc                           every epoch
  val/confusion_matrix, val/predictions (IMAGES)          every callbacks.tensorboard_figures.every_n_epochs
  HPARAMS: the run's settings beside final/val_acc_best, final/test_acc, ...      once, when the run ends
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.classification import MulticlassConfusionMatrix

from vit_cifar.errors import ConfigError

if TYPE_CHECKING:  # omegaconf is imported where it is used: the benchmark runs without Hydra
    from omegaconf import DictConfig


def tensorboard_of(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class GradNormMonitor(L.Callback):
    """Logs ``train/grad_norm``, the 2-norm of all gradients together, before clipping, every
    ``trainer.log_every_n_steps`` optimiser steps (the steps between cost nothing).

    It is the norm that ``trainer.gradient_clip_val`` is compared with: above it, the update was clipped.
    ``torch.nn.utils.get_total_norm`` is the function clipping itself uses; unlike Lightning's ``grad_norm``
    it does not copy every parameter's norm to the host. Under DDP the gradients are already averaged over
    the ranks here, and only rank 0's loggers write.

    Under 16-mixed, Lightning unscales the gradients before this hook, except for a fused optimiser, whose
    kernel unscales them inside its step (``ClassifierModule.configure_gradient_clipping`` unscales them after
    this hook, before clipping): then the norm read here is divided by the GradScaler's scale, so that the
    logged norm is the true one in every precision.
    """

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.global_step % trainer.log_every_n_steps or trainer.sanity_checking:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and any(group.get("fused") for group in optimizer.param_groups):
            norm /= scaler.get_scale()  # still scaled: see the class's docstring
        for logger in trainer.loggers:
            logger.log_metrics({"train/grad_norm": norm}, step=trainer.global_step)


class TensorBoardFigures(L.Callback):
    """Every ``every_n_epochs`` epochs (and at the last epoch), writes two figures of the validation set to
    TensorBoard: its confusion matrix (each row normalised: the share of a true class given each prediction)
    and the first ``num_images`` validation images with their predicted and true classes.

    It reads the logits that ``validation_step`` returns, so nothing is computed twice; other epochs cost one
    comparison per batch. Under DDP every rank adds its share to the confusion matrix (synchronised by
    torchmetrics) and only rank 0 draws; its images are the first of its own share of the validation set.
    Needs the TensorBoard logger; without it the callback does nothing.
    """

    def __init__(self, every_n_epochs: int = 10, num_images: int = 16) -> None:
        if every_n_epochs < 1 or num_images < 0:
            raise ConfigError(
                f"callbacks.tensorboard_figures: every_n_epochs={every_n_epochs} must be >= 1 and "
                f"num_images={num_images} >= 0"
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._active = False
        self._confmat: MulticlassConfusionMatrix | None = None
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (images, preds, targets)

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = (trainer.max_epochs or 0) > 0 and epoch >= trainer.max_epochs  # -1: no last epoch
        return not trainer.sanity_checking and (epoch % self.every_n_epochs == 0 or last)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self._due(trainer) and tensorboard_of(trainer) is not None
        self._confmat, self._samples = None, []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active:
            return
        if not isinstance(outputs, torch.Tensor):
            rank_zero_warn(
                "callbacks.tensorboard_figures needs validation_step to return the logits: no figures"
            )
            self._active = False
            return
        x, target = batch
        if self._confmat is None:  # (N, C) logits: C classes
            self._confmat = MulticlassConfusionMatrix(outputs.shape[-1], normalize="true").to(outputs.device)
        self._confmat.update(outputs, target)
        kept = sum(len(s[0]) for s in self._samples)
        if kept < self.num_images:
            n = self.num_images - kept
            self._samples.append((x[:n].float().cpu(), outputs[:n].argmax(-1).cpu(), target[:n].cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active or self._confmat is None:
            return
        matrix = self._confmat.compute().cpu()  # a collective under DDP: every rank calls it
        self._confmat.reset()
        logger = tensorboard_of(trainer)
        if not trainer.is_global_zero or logger is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        classes = list(getattr(datamodule, "classes", None) or range(matrix.shape[0]))
        step = trainer.global_step
        figure = confusion_figure(self._confmat, matrix, classes)
        logger.experiment.add_figure("val/confusion_matrix", figure, step)
        if self._samples:
            images, preds, targets = (torch.cat(parts) for parts in zip(*self._samples, strict=True))
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            figure = predictions_figure(images, preds, targets, classes, mean, std)
            logger.experiment.add_figure("val/predictions", figure, step)
        self._samples = []


def confusion_figure(metric: MulticlassConfusionMatrix, matrix: torch.Tensor, classes: list):
    """torchmetrics' plot of ``matrix``, on a figure large enough for ten labelled classes."""
    fig = _figure(max(5.0, 0.75 * len(classes) + 2), max(5.0, 0.75 * len(classes) + 2))
    ax = fig.add_subplot()
    metric.plot(val=matrix, ax=ax, labels=[str(c) for c in classes])
    ax.set_title("validation: share of each true class (rows) by prediction")
    return fig


def predictions_figure(
    images: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, classes: list, mean=None, std=None
):
    """The images in a grid (torchvision's ``make_grid``), each under its predicted class: green when right,
    red with the true class when wrong. One axes for all, so it draws in a fraction of a second."""
    from torchvision.utils import make_grid

    if mean is not None and std is not None:  # undo the normalisation for display
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    (h, w), band, pad = (
        images.shape[-2:],
        images.shape[-2] // 2,
        2,
    )  # a white band above each image for its label
    cols = min(8, len(images))
    tiles = torch.nn.functional.pad(images.clamp(0, 1), (0, 0, band, 0), value=1.0)
    grid = make_grid(tiles, nrow=cols, padding=pad, pad_value=1.0)  # (3, H, W)
    fig = _figure(1.5 * cols, 1.5 * cols * grid.shape[1] / grid.shape[2], layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_axis_off()
    for i, (pred, true) in enumerate(zip(preds.tolist(), targets.tolist(), strict=True)):
        row, col = divmod(i, cols)
        right = pred == true
        label = str(classes[pred]) if right else f"{classes[pred]}\n(true: {classes[true]})"
        ax.text(
            pad + col * (w + pad) + w / 2,
            pad + row * (h + band + pad) + band - 0.5,
            label,
            ha="center",
            va="bottom",
            fontsize=8,
            color="green" if right else "red",
        )
    return fig


def _figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib figure outside pyplot (no global state, no GUI backend) that TensorBoard can render."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


# Keys of the run's config that are not settings of the experiment (where files go, how data is loaded).
HPARAMS_SKIP = (
    *("data.root", "data.cache_dir", "data.num_workers", "data.pin_memory", "data.persistent_workers"),
    *("data.mean", "data.std", "trainer.default_root_dir", "trainer.enable_progress_bar"),
)
HPARAMS_GROUPS = ("model", "optim", "scheduler", "aug", "data", "trainer")
FINAL_METRICS = ("val_acc_best", "val_acc_last_epoch", "test_acc", "test_loss")


def flat_hparams(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The settings that define a run, as ``group.key`` -> value, for TensorBoard's hparams table:
    seed, task name and every value of the model, optimiser, schedule, augmentation, data and trainer groups
    except paths and loader plumbing; ``model`` and ``optim`` name their classes."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, str | int | float | bool] = {
        "seed": config.get("seed"),
        "task_name": config.get("task_name"),
    }

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and prefix in ("model", "optim"):  # which network, which optimiser
                    flat[prefix] = str(value).rsplit(".", 1)[-1]
                elif not str(key).startswith("_"):
                    walk(f"{prefix}.{key}", value)
        elif prefix not in HPARAMS_SKIP:
            flat[prefix] = node if isinstance(node, bool | int | float | str) else str(node)

    for group in HPARAMS_GROUPS:
        walk(group, config.get(group) or {})
    return flat


def log_final_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict) -> None:
    """Write the hparams table (TensorBoard's HPARAMS tab): the run's settings and its final metrics, so the
    jobs of a sweep can be compared side by side. Once per run, after testing, by rank 0."""
    logger = tensorboard_of(trainer)
    if logger is None or not trainer.is_global_zero:
        return
    final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None}
    if not final:
        return
    logger.log_hyperparams(flat_hparams(cfg), metrics=final)
    logger.finalize("success")  # flush: a sweep's next job runs in this same process
