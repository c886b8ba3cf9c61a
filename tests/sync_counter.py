"""Counting the calls that make the host wait for the device, on CPU, where nothing waits.

On a GPU each of these reads a device tensor on the host (or, like ``torch.unique`` and ``nonzero``, sizes its
output from device data), so the CPU stops queueing work until the GPU has caught up. On CPU they cost nothing,
which is why they go unnoticed there; counting them per training step finds them without any timing.
"""

from __future__ import annotations

import traceback
from collections import Counter

import lightning as L
import torch

# (owner, attribute) of every call counted.
SYNCING_CALLS = [
    (torch.Tensor, "item"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "numpy"),
    (torch.Tensor, "__bool__"),
    (torch.Tensor, "__int__"),
    (torch.Tensor, "__float__"),
    (torch.Tensor, "__index__"),
    (torch.Tensor, "unique"),
    (torch.Tensor, "nonzero"),
    (torch.Tensor, "masked_select"),
    (torch, "unique"),
    (torch, "nonzero"),
    (torch, "masked_select"),
    (torch, "bincount"),
    # host data copied to a device tensor (torch.tensor(3, device="cuda")): a blocking copy, which waits for
    # the queue; counted when a device is named and the data is not already a tensor
    (torch, "tensor"),
    (torch, "as_tensor"),
]
CREATORS = ("torch.tensor", "torch.as_tensor")


class SyncCounter(L.Callback):
    """Counts the syncing calls of ``steps`` whole training steps, from this callback's
    ``on_train_batch_start`` at ``global_step == start`` to the same hook ``steps`` steps later: the data
    fetch, the forward and backward passes, every callback hook, clipping, the optimiser and scheduler steps.

    The instances made by a config are kept in ``SyncCounter.instances`` for the test to read."""

    instances: list[SyncCounter] = []

    def __init__(self, start: int = 2, steps: int = 4) -> None:
        self.start, self.steps = start, steps
        self.calls: Counter[str] = Counter()
        self.where: dict[str, str] = {}
        self._saved: list[tuple[object, str, object]] = []
        self.counted_steps = 0
        SyncCounter.instances.append(self)

    def _install(self) -> None:
        for owner, name in SYNCING_CALLS:
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, self._counting(f"{getattr(owner, '__name__', owner)}.{name}", original))

    def _counting(self, label: str, original):
        def counted(*args, **kwargs):
            if label in CREATORS and (kwargs.get("device") is None or isinstance(args[0], torch.Tensor)):
                return original(*args, **kwargs)  # not a copy of host data to a device
            if self._saved:
                self.calls[label] += 1
                frames = traceback.extract_stack(limit=12)[:-1]
                self.where.setdefault(
                    label, " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(frames))
                )
            return original(*args, **kwargs)

        return counted

    def _remove(self) -> None:
        saved, self._saved = self._saved, []
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.start and not self._saved:
            self._install()
        elif trainer.global_step == self.start + self.steps and self._saved:
            self._remove()
            self.counted_steps = self.steps

    def on_train_end(self, trainer, pl_module) -> None:
        self._remove()  # never leave the patches behind

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._remove()
