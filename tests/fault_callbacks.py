"""Test-only callbacks, loaded by a CLI subprocess through the real config:
``+callbacks.<name>={_target_: fault_callbacks.<Class>, ...}`` (the fault tests put this folder on its path).
"""

from __future__ import annotations

import lightning as L


class PoisonBatch(L.Callback):
    """Fills the images of the batch at optimiser step ``at_step`` with NaN: a real non-finite loss on cue."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            batch[0].fill_(float("nan"))
