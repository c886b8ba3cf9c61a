"""Training callbacks of our own: exact resume (random states), a finite-loss guard, and the weights' EMA."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from vit_cifar.errors import ConfigError, TrainingError


def capture_rng_states() -> dict:
    """This process's Python, NumPy and torch (CPU and CUDA) random states, as tensors and plain values only,
    so that ``torch.load(weights_only=True)`` reads them back."""
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
    """Keeps the random generators' states in every checkpoint and puts them back when fitting resumes.

    Lightning restores weights, optimiser, LR schedulers, grad scaler, loops and callbacks, but not the
    Python, NumPy and torch generators, which draw the augmentations, MixUp/CutMix, dropout masks and the
    DataLoader's shuffle seed (a ``RandomSampler`` without its own generator seeds itself from torch's).
    With them restored, a run resumed from an end-of-epoch checkpoint draws what the uninterrupted run drew.

    The states are restored as the checkpoint is loaded, which Lightning does before it makes the first
    training iterator; nothing in between draws random numbers (the sanity check runs in ``isolate_rng``).
    Under DDP the file holds rank 0's states and every rank gets them back: Lightning seeds all ranks alike
    and every rank draws the same number of values per step, so the ranks' generators are in step anyway.
    Exactness needs ``data.num_workers=0`` or ``data.persistent_workers=false``: persistent workers keep their
    own generators, which no checkpoint holds.
    """

    def state_dict(self) -> dict:
        return capture_rng_states()

    def load_state_dict(self, state_dict: dict) -> None:
        restore_rng_states(state_dict)


class FiniteLossGuard(L.Callback):
    """Stops training at the first non-finite loss, before its backward pass and optimiser step, so the
    weights in memory and every checkpoint on disk stay the last good ones. All ranks stop together (DDP)."""

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())  # one host sync per step: cheap next to a step
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        kept = latest_checkpoint(trainer) or "none written yet"
        raise TrainingError(
            f"the training loss is {loss.item() if bad else 'non-finite on another rank'} at step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}): stopped before that step's update; "
            f"last good checkpoint: {kept}; lower optim.lr, keep trainer.gradient_clip_val, "
            "or train in trainer.precision=32-true or bf16-mixed"
        )


def latest_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest file any of the trainer's ModelCheckpoint callbacks has written (the best one or last.ckpt)."""
    paths = {p for cb in trainer.checkpoint_callbacks for p in (cb.last_model_path, cb.best_model_path) if p}
    existing = [p for p in paths if os.path.isfile(p)]
    return max(existing, key=os.path.getmtime) if existing else None


class EMA(EMAWeightAveraging):
    """An exponential moving average of the weights, used for validation, testing and in every checkpoint.

    Lightning's callback updates the average after every optimiser step (the first step copies the weights,
    then ``ema = decay * ema + (1 - decay) * weights``, for parameters and buffers such as BatchNorm stats),
    swaps it in for each validation epoch, copies it into the model when training ends, and writes it as the
    checkpoint's ``state_dict`` (the raw weights go to ``current_model_state``, for resuming). So model
    selection, ``vit_cifar.checkpoint.load_classifier`` and evaluation all see the averaged weights.

    One change: outside fitting, loading a checkpoint leaves the model with the averaged ``state_dict``. The
    parent callback, still holding its average after ``fit``, would load ``current_model_state`` instead, so
    ``trainer.test(ckpt_path=...)`` on the trainer that just fitted would test the raw weights, not the EMA.

    Args:
        decay: weight of the old average at each step; the average spans about ``1 / (1 - decay)`` steps.
        update_starting_at_step: first optimiser step (0-based) that updates the average; None from the first.
        update_every_n_steps: update every n-th step.
    """

    def __init__(
        self, decay: float = 0.9995, update_starting_at_step: int | None = None, update_every_n_steps: int = 1
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in [0, 1): 0.9995 averages ~2,000 steps")
        if update_every_n_steps < 1:
            raise ConfigError(f"callbacks.ema.update_every_n_steps={update_every_n_steps} must be at least 1")
        super().__init__(
            decay=decay,
            update_starting_at_step=update_starting_at_step,
            update_every_n_steps=update_every_n_steps,
        )

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore the average and the raw weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
