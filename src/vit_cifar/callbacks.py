"""Training callbacks of our own, each a thin layer over a Lightning one."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from vit_cifar.errors import ConfigError


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

    def __init__(self, decay: float = 0.9995, update_starting_at_step: int | None = None,
                 update_every_n_steps: int = 1) -> None:  # fmt: skip
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay} must be in [0, 1): 0.9995 averages ~2,000 steps")
        if update_every_n_steps < 1:
            raise ConfigError(f"callbacks.ema.update_every_n_steps={update_every_n_steps} must be at least 1")
        super().__init__(decay=decay, update_starting_at_step=update_starting_at_step,
                         update_every_n_steps=update_every_n_steps)  # fmt: skip

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore the average and the raw weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
