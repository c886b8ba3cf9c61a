"""Training callbacks for what Lightning's do not do: exact resume (random states, the run's wall time), a
finite-loss guard, an EMA and a progress bar that do not wait for the device every step."""

from __future__ import annotations

import os
import random
import time
from itertools import chain
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from vit_cifar.checkpoints.loading import epochs_done
from vit_cifar.compat import averaged_model
from vit_cifar.errors import TrainingError


def capture_rng_states() -> dict:
    """This process's random states as tensors and plain values, which ``torch.load(weights_only=True)`` reads."""
    numpy_state = np.random.get_state(legacy=False)  # {"state": {"key": uint32 array, "pos": int}, ...}
    key = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    states = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": key, "pos": int(numpy_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device: under DDP, one per rank
    return states


def restore_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {"key": key, "pos": numpy_state["state"]["pos"]}})
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Keeps the Python, NumPy and torch generators' states in every checkpoint and restores them on resume.

    Lightning restores weights, optimiser, schedulers and loops, not these generators, which draw augmentations,
    MixUp/CutMix, dropout and the DataLoader's shuffle: restored before the first training iterator is made, a
    resumed run draws what the uninterrupted one drew. Under DDP every rank's states are gathered into the file
    and each rank gets its own back. Persistent workers keep generators of their own that no checkpoint holds.
    """

    def state_dict(self) -> dict:
        states = capture_rng_states()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {"ranks": [states]}
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, states)
        return {"ranks": ranks}

    def load_state_dict(self, state_dict: dict) -> None:
        ranks = state_dict.get("ranks", [state_dict])  # older checkpoints hold one process's states
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank < len(ranks):  # a run resumed on more processes: the new ranks keep their own seeding
            restore_rng_states(ranks[rank])


class FiniteLossGuard(L.Callback):
    """Stops training at the first non-finite loss, naming its step, before any checkpoint holds its updates;
    all ranks stop together.

    Reading the loss on the host every step would wait for the GPU: each step records on the device the step and
    value of the first bad loss, read every ``check_every_n_steps`` steps (None: ``trainer.log_every_n_steps``),
    before validation and at each epoch's end, so before any checkpoint. With 1, every step is checked before its
    update (one wait per step) and the weights in memory stay the last good ones too.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        self.check_every_n_steps = check_every_n_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # On the device: the step (-1: none yet) and value of the first non-finite loss. Its epoch is the one
        # that checks it: every epoch's end is checked.
        self._bad_step = torch.tensor(-1, device=pl_module.device)
        self._bad_loss = torch.tensor(0.0, device=pl_module.device)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        loss = loss.detach().float()
        # All on the device, no host sync; Python numbers enter as kernel arguments, not as copies.
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, trainer.global_step, self._bad_step)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        if trainer.global_step % (self.check_every_n_steps or trainer.log_every_n_steps) == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        """Read the record (a host sync, and under DDP a collective) and stop when any rank saw a bad loss."""
        step = int(self._bad_step)
        bad = step >= 0
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        # the newest file a ModelCheckpoint callback has written (the best one or last.ckpt)
        paths = {
            p for cb in trainer.checkpoint_callbacks for p in (cb.last_model_path, cb.best_model_path) if p
        }
        kept = max(filter(os.path.isfile, paths), key=os.path.getmtime, default="none written yet")
        every = self.check_every_n_steps or trainer.log_every_n_steps
        stopped = f"stopped at step {trainer.global_step} (the loss is read every {every} steps, "
        stopped += "callbacks.finite_loss.check_every_n_steps)"
        if not bad:
            where, stopped = f"non-finite on another rank by step {trainer.global_step}", "stopped"
        else:
            where = f"{float(self._bad_loss)} at step {step}"
            if step == trainer.global_step and trainer.training:
                stopped = "stopped before that step's update"
        raise TrainingError(
            f"the training loss is {where} (epoch {epochs_done(trainer.current_epoch)}): {stopped}; "
            f"last good checkpoint: {kept}; lower optim.lr, keep trainer.gradient_clip_val, or train in "
            "trainer.precision=32-true or bf16-mixed"
        )


class EMA(EMAWeightAveraging):
    """Lightning's EMA of the weights (used for validation, in every checkpoint's ``state_dict`` and so by the
    test), with two changes: the update waits for no device (see ``on_train_batch_end``), and outside fitting a
    checkpoint loads its averaged ``state_dict``; Lightning's, still holding its average after ``fit``, would load
    the raw ``current_model_state``, so ``trainer.test(ckpt_path=...)`` would test the raw weights."""

    def __init__(self, decay: float = 0.9995, **kwargs: Any) -> None:  # kwargs: when to update (Lightning's)
        super().__init__(decay=decay, **kwargs)
        self._ema_update = get_ema_multi_avg_fn(decay)  # torch's own: one foreach lerp over all tensors
        self._started = False  # whether the average holds weights yet (else the first update copies them)
        self._updated_at_step = 0  # the optimiser step of the last update (once per step under accumulation)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        """As Lightning's, but ``AveragedModel.update_parameters`` reads its step count on the host (a wait for
        the GPU every step) and updates tensor by tensor: this is one foreach update and no wait."""
        if trainer.global_step > self._updated_at_step and self.should_update(
            step_idx=trainer.global_step - 1
        ):
            self._update_average(pl_module)
            self._updated_at_step = trainer.global_step

    @torch.no_grad()
    def _update_average(self, pl_module: L.LightningModule) -> None:
        average = averaged_model(self)
        pairs = list(
            zip(
                chain(average.module.parameters(), average.module.buffers()),
                chain(pl_module.parameters(), pl_module.buffers()),
                strict=True,
            )
        )
        floats = [(a, m) for a, m in pairs if a.is_floating_point()]
        if self._started and floats:
            self._ema_update([a for a, _ in floats], [m for _, m in floats], None)
        # The first update copies the weights, as AveragedModel's does; integer buffers (BatchNorm's
        # num_batches_tracked) are always copied, not averaged.
        for a, m in pairs:
            if not (self._started and a.is_floating_point()):
                a.copy_(m)
        self._started = True
        average.n_averaged += 1  # on the device: no wait

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore the average and the raw weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            # once per run: whether the restored average has started
            average = averaged_model(self)
            self._started = average is not None and int(average.n_averaged) > 0


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, reading the logged values every ``metrics_every_n_steps`` steps (None:
    ``trainer.log_every_n_steps``): Lightning 2.6 converts every ``prog_bar`` value to a number at every batch,
    a wait for the GPU each step (``refresh_rate`` does not limit it). The module logs its step loss without
    ``prog_bar``; this bar adds the step values (``train/loss_step`` as ``train/loss``) when it reads."""

    def __init__(self, metrics_every_n_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics_every_n_steps = metrics_every_n_steps
        self._shown: dict | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        every = self.metrics_every_n_steps or trainer.log_every_n_steps
        if trainer.training and self._shown is not None and trainer.global_step % every:
            return self._shown
        shown = super().get_metrics(trainer, pl_module)
        if trainer.training:  # the step values (train/loss), which the module logs without prog_bar
            for name, value in trainer.callback_metrics.items():
                if name.endswith("_step") and name[: -len("_step")] not in shown:
                    shown[name[: -len("_step")]] = float(value)
        self._shown = shown
        return shown

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = None  # the epoch's values are read at its end
        _ = (
            trainer.callback_metrics
        )  # computed on every rank: the bar reads them on rank 0 only (see EpochLog's)
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = None
        super().on_validation_end(trainer, pl_module)


class RunClock(L.Callback):
    """The run's wall time across resumes (``wall_s`` in metrics.json), counted from ``started`` (taken before
    the Trainer is built) and saved in each checkpoint: a resumed run goes on from it (the time between that
    checkpoint and a kill is redone work, not counted twice). Lightning's Timer counts fitting only."""

    def __init__(self) -> None:
        self.started = time.perf_counter()  # train() sets its own start
        self.before_s = 0.0  # the parts of the run before the checkpoint it resumed from
        self.saved_s = 0.0  # the count the last checkpoint loaded holds

    def elapsed_s(self) -> float:
        return self.before_s + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"wall_s": self.elapsed_s()}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores callbacks also when a checkpoint is only tested (trainer.test(ckpt_path=...), as
        # train() does after fitting): the count goes on from a checkpoint only when training resumes from it.
        self.saved_s = float(state_dict.get("wall_s", 0.0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before_s = self.saved_s  # after every restore, whichever the strategy's order


def run_clock_of(trainer: L.Trainer) -> RunClock | None:
    return next((c for c in trainer.callbacks if isinstance(c, RunClock)), None)
