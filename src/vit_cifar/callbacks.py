"""Callbacks that make a run resumable exactly and stop it cleanly when the loss stops being a number."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from vit_cifar.errors import TrainingError


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
        ckpt = trainer.checkpoint_callback
        kept = (
            getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or "none written yet"
        )
        raise TrainingError(
            f"the training loss is {loss.item() if bad else 'non-finite on another rank'} at step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}): stopped before that step's update; "
            f"last good checkpoint: {kept}; lower optim.lr, keep trainer.gradient_clip_val, "
            "or train in trainer.precision=32-true or bf16-mixed"
        )
