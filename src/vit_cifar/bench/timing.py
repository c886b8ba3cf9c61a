"""Timing for the benchmark: windows of steps, synchronised at their edges on CUDA, and their rates."""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import lightning as L
import torch

from vit_cifar.devices import autocast_dtype

# ------------------------------------------------------------------------------------------ timing


class Stopwatch:
    """Wall-clock and process CPU time of one window. On CUDA the device is synchronised at both edges, so
    that queued work is counted. Process CPU time (all threads of this process, not DataLoader workers) is
    what CPU figures are also given in: other processes on a shared machine slow the wall clock, not it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = math.nan

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Stopwatch:
        self._sync()
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        return self


def summary(images_per_s: list[float]) -> dict:
    return {
        "mean": statistics.fmean(images_per_s),
        "std": statistics.stdev(images_per_s) if len(images_per_s) > 1 else 0.0,
        "runs": images_per_s,
    }


def rates(watches: list[Stopwatch], images: int) -> dict:
    """images/s by the wall clock (mean, std, runs), and on CPU also per second of process CPU time."""
    result = summary([images / w.wall for w in watches])
    if watches[0].device.type == "cpu":
        result["per_cpu_second"] = summary([images / w.cpu for w in watches])
    return result


def autocast_for(precision: str, device: torch.device):
    """The autocast Lightning's precision plugin uses for ``precision``; whether a GradScaler goes with it."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext(), False
    # float16 goes with a GradScaler, on CPU too (as in training)
    return torch.autocast(device.type, dtype=dtype), dtype is torch.float16


class WindowTimer(L.Callback):
    """Times the optimiser steps ``warmup + 1`` to ``warmup + steps`` of a fit."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps = warmup, steps
        self.watch = Stopwatch(device)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.warmup == 0:
            self.watch.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and self.warmup > 0:
            self.watch.start()
        elif trainer.global_step == self.warmup + self.steps:
            self.watch.stop()
