"""What a person watches during training: the epoch log line, and TensorBoard beyond the module's scalars (the
gradient norm, validation figures, the hparams table). docs/sweeps.md has the table of what is where."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassConfusionMatrix

from vit_cifar.checkpoints.loading import epochs_done

log = logging.getLogger("vit_cifar.train")

# A run on a CPU estimated to take longer than this gets a warning and a pointer to the CPU recipes.
LONG_CPU_RUN_S = 3 * 3600
# Steps timed before that estimate: the first few are slower (allocation, oneDNN kernel selection).
WARMUP_STEPS, TIMED_STEPS = 5, 20


def duration(seconds: float) -> str:
    """0:07:05, 13:20:00: hours, minutes and seconds, for people."""
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class EpochLog(L.Callback):
    """One line per epoch through Python logging, so it reaches ``train.log``, a redirected stdout, nohup and
    SLURM logs, where the progress bar does not::

        epoch 3/100 | train loss 1.532 acc 0.447 | val loss 1.404 acc 0.497 | lr 3.0e-04 | 0:06:12 elapsed,
        ETA 3:20:10 for the run (at 14:31)

    The ETA: the mean epoch so far times the epochs left, or the time budget left when that ends the run first.
    On a CPU, a run estimated to take over three hours says so after its first steps. Rank 0 only."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first_epoch = time.monotonic(), trainer.current_epoch
        self._timed: list[float] = []  # the first steps' end times, for the CPU estimate

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self._timed) > TIMED_STEPS:
            return
        self._timed.append(time.monotonic())
        if len(self._timed) <= TIMED_STEPS or trainer.strategy.root_device.type != "cpu":
            return
        per_step = (self._timed[-1] - self._timed[WARMUP_STEPS]) / (TIMED_STEPS - WARMUP_STEPS)
        total = per_step * float(trainer.estimated_stepping_batches)
        timer = budget_timer(trainer)
        if timer is not None:  # trainer.max_time ends the run first
            total = min(total, timer.time_elapsed() + timer.time_remaining())
        if total > LONG_CPU_RUN_S:
            log.warning(
                f"this run is sized for a GPU: on this CPU it would take about {duration(total)} "
                f"({per_step:.2f} s a step). For a CPU run experiment=cpu_hour (the best ViT in one hour) or "
                "experiment=smoke (a few minutes); on a GPU, trainer=gpu"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Read on EVERY rank, before the rank-0 check: the first read at an epoch's end computes the metrics,
        # under DDP a collective per metric; read on rank 0 alone it would pair with the other ranks' next
        # collective (a checkpoint's) and hang the run.
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._start
        done, timer, max_epochs = (
            epochs_done(trainer.current_epoch),
            budget_timer(trainer),
            trainer.max_epochs or 0,
        )
        # "3/100" when the epochs end the run, "3" when a time budget (trainer.max_time) may end it first
        parts = [f"epoch {done}" + (f"/{max_epochs}" if max_epochs > 0 and not timer else "")]
        for stage, loss in (("train", "train/loss_epoch"), ("val", "val/loss")):
            values = [f"loss {float(metrics[loss]):.3f}"] if loss in metrics else []
            if f"{stage}/acc" in metrics:
                values.append(f"acc {float(metrics[f'{stage}/acc']):.4f}")
            if values:
                parts.append(f"{stage} {' '.join(values)}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        # seconds left: by the time budget, or by the mean epoch so far when the epochs end the run first
        left = [max(timer.time_remaining(), 0.0)] if timer else []
        if max_epochs > 0:
            left.append(elapsed / (done - self._first_epoch) * max(max_epochs - done, 0))
        eta = ""
        if left:
            end = datetime.now() + timedelta(seconds=min(left))
            eta = f", ETA {duration(min(left))} for the run (at {end:%H:%M})"
        parts.append(f"{duration(elapsed)} elapsed{eta}")
        log.info(" | ".join(parts))


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """Lightning's Timer that ``trainer.max_time`` installs (the clock of a time budget), or None."""
    return next(
        (c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None), None
    )


def tensorboard_of(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class GradNormMonitor(L.Callback):
    """Logs ``train/grad_norm``, the norm ``trainer.gradient_clip_val`` is compared with (before clipping),
    every ``trainer.log_every_n_steps`` steps. ``get_total_norm`` is what clipping uses; unlike Lightning's
    ``grad_norm`` it copies one number to the host, not one per parameter. Under 16-mixed a fused optimiser's
    gradients are still scaled here (they are unscaled in ``configure_gradient_clipping``): divided by the scale.
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
            norm /= scaler.get_scale()
        for logger in trainer.loggers:
            logger.log_metrics({"train/grad_norm": norm}, step=trainer.global_step)


class TensorBoardFigures(L.Callback):
    """Every ``every_n_epochs`` epochs and at the last, writes the validation confusion matrix (rows normalised)
    and the first ``num_images`` validation images with their predictions to TensorBoard, from the logits
    ``validation_step`` returns. Under DDP every rank adds to the matrix and rank 0 draws."""

    def __init__(self, every_n_epochs: int = 10, num_images: int = 16) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = epochs_done(trainer.current_epoch)
        last = (trainer.max_epochs or 0) > 0 and epoch >= trainer.max_epochs  # -1: no last epoch
        due = not trainer.sanity_checking and (epoch % self.every_n_epochs == 0 or last)
        self._active = due and tensorboard_of(trainer) is not None
        self._confmat: MulticlassConfusionMatrix | None = None
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (images, preds, targets)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        if not self._active:  # outputs: the logits validation_step returns
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
        side = max(5.0, 0.75 * len(classes) + 2)  # large enough for ten labelled classes
        figure = _figure(side, side)
        self._confmat.plot(val=matrix, ax=figure.add_subplot(), labels=[str(c) for c in classes])
        figure.axes[0].set_title("validation: share of each true class (rows) by prediction")
        logger.experiment.add_figure("val/confusion_matrix", figure, step)
        if self._samples:
            images, preds, targets = (torch.cat(parts) for parts in zip(*self._samples, strict=True))
            mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
            figure = predictions_figure(images, preds, targets, classes, mean, std)
            logger.experiment.add_figure("val/predictions", figure, step)
        self._samples = []


def predictions_figure(
    images: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, classes: list, mean=None, std=None
):
    """The images in a grid (torchvision's ``make_grid``), each under its predicted class: green when right,
    red with the true class when wrong. One axes for all, so it draws in a fraction of a second."""
    from torchvision.utils import make_grid

    if mean is not None and std is not None:  # undo the normalisation for display
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    h, w = images.shape[-2:]
    band, pad = h // 2, 2  # a white band above each image for its label
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
        x, y = pad + col * (w + pad) + w / 2, pad + row * (h + band + pad) + band - 0.5  # above the image
        ax.text(x, y, label, ha="center", va="bottom", fontsize=8, color="green" if right else "red")
    return fig


def _figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib figure outside pyplot (no global state, no GUI backend) that TensorBoard can render."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


# The settings that tell runs apart, in TensorBoard's hparams table; every key given on the command line (so
# every swept key) is added to them. "model" and "optim" name the classes.
HPARAMS_KEYS = (
    *("experiment", "seed", "model", "model.tokenizer", "model.embed_dim", "model.depth", "model.patch_size"),
    *("model.drop_rate", "model.drop_path_rate", "optim", "optim.lr", "optim.weight_decay"),
    *("scheduler.warmup_epochs", "aug.policy", "aug.mixup_alpha", "aug.cutmix_alpha", "aug.label_smoothing"),
    *("data.root", "data.train_subset", "data.batch_size", "trainer.max_epochs", "trainer.precision"),
)
FINAL_METRICS = ("val_acc_best", "val_acc_last_epoch", "test_acc", "test_loss")


def flat_hparams(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """:data:`HPARAMS_KEYS` and the command line's keys -> their values, numbers and booleans as such, lists as
    text, unset ones left out."""
    try:
        choices = dict(HydraConfig.get().runtime.choices)  # config group -> the option chosen
        overrides = HydraConfig.get().overrides.task  # a sweep job's swept values among them
    except ValueError:  # no Hydra run: nothing was given on a command line
        choices, overrides = {}, []
    given = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    given = [k for k in given if not k.startswith(("hydra.", "paths.", "callbacks.", "logger."))]
    flat: dict[str, str | int | float | bool] = {}
    for key in dict.fromkeys([*HPARAMS_KEYS, *given]):
        if key in ("model", "optim"):
            value = str(OmegaConf.select(cfg, f"{key}._target_", default="")).rsplit(".", 1)[-1] or None
        else:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None or isinstance(value, DictConfig):  # a config group: the option chosen
                value = choices.get(key)
        if value is not None:  # a list as text
            flat[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def log_final_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict) -> None:
    """TensorBoard's HPARAMS tab: the run's settings beside its final metrics, so a sweep's jobs compare."""
    logger = tensorboard_of(trainer)
    if logger is None or not trainer.is_global_zero:
        return
    final = {f"whole_run/{k}": float(metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None}
    if not final:
        return
    logger.log_hyperparams(flat_hparams(cfg), metrics=final)
    logger.finalize("success")  # flush: a sweep's next job runs in this same process
