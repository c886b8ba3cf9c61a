"""Training throughput through training's own job, beside one plain PyTorch loop, and the training DataLoader.

The Lightning figure times ``vit_cifar.training.run.train`` itself (the command's DataModule, LightningModule,
Trainer, callbacks and loggers, as ``python -m vit_cifar.train`` builds them), stopped by ``trainer.max_steps``.
The plain loop then runs as many steps with the objects that fit used (its network, optimiser, learning-rate
schedule, loss, batches and their on-device augmentation, precision context and gradient scaler): the same
work per step without Lightning, its callbacks or its loggers, so the difference is what those cost.
"""

from __future__ import annotations

import copy
import statistics
import time
from itertools import pairwise
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from vit_cifar.config.entry import CONFIG_DIR, compose_config
from vit_cifar.devices import local_device
from vit_cifar.training.run import build_datamodule, train


class Clock(L.Callback):
    """Wall-clock and process CPU time at the edges of the windows: the start, the end of ``warmup`` untimed
    steps, then every ``steps`` steps. On CUDA the device is synchronised at each edge (never inside a window),
    so that queued work is counted. Process CPU time (this process's threads, not DataLoader workers) is
    slowed far less than the wall clock by other processes on a shared machine.

    As the fit's callback (``callbacks.step_timer``, added by :func:`measure_training`: training never imports
    it) it times the optimiser steps and keeps the fit's trainer and module for the plain loop."""

    fits: list[Clock] = []  # where train() hands its fit to the benchmark: Hydra builds the callback

    def __init__(self, device: torch.device | None, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps, self.marks = device, warmup, steps, []
        if device is not None:
            self.mark()

    def mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((time.perf_counter(), time.process_time()))

    def done(self, step: int) -> None:
        """After step ``step`` (1-based): a mark when a window ends there."""
        if step >= self.warmup and (step - self.warmup) % self.steps == 0:
            self.mark()

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer, self.module, self.device = trainer, pl_module, pl_module.device
        self.mark()
        Clock.fits.append(self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.done(trainer.global_step)

    def rates(self, images: int) -> dict:
        """images/s of each window of ``images`` images (on CPU also per second of process CPU time)."""

        def summary(images_per_s: list[float]) -> dict:
            std = statistics.stdev(images_per_s) if len(images_per_s) > 1 else 0.0
            return {"mean": statistics.fmean(images_per_s), "std": std, "runs": images_per_s}

        windows = list(pairwise(self.marks[1:]))
        result = summary([images / (b[0] - a[0]) for a, b in windows])
        if self.device.type == "cpu":
            result["per_cpu_second"] = summary([images / (b[1] - a[1]) for a, b in windows])
        return result | {"first_steps_s": self.marks[1][0] - self.marks[0][0]}


def plain_loop(fit: Clock) -> Clock:
    """As many steps as the fit made, with its objects, in a loop of plain PyTorch (after the fit, which left
    its module and optimiser state on the CPU)."""
    trainer, module, device = fit.trainer, fit.module, fit.device
    datamodule, optimizer = trainer.datamodule, trainer.optimizers[0]
    net, schedule = module.to(device).net, trainer.lr_scheduler_configs[0].scheduler
    for state in optimizer.state.values():
        state.update({k: v.to(device) for k, v in state.items() if isinstance(v, torch.Tensor)})
    precision, clip = trainer.precision_plugin, trainer.gradient_clip_val
    # 16-mixed's scaler; a disabled one passes everything through (scale, unscale_, step, update)
    scaler = getattr(precision, "scaler", None) or torch.amp.GradScaler(device.type, enabled=False)
    trainer.training = True  # the DataModule augments (device_aug) and mixes training batches only
    clock = Clock(device, fit.warmup, fit.steps)
    for step, (x, y) in enumerate(datamodule.train_dataloader(), start=1):
        x, y = datamodule.on_after_batch_transfer((x.to(device), y.to(device)), 0)
        with precision.forward_context():
            loss = module.loss_fn(net(x), y).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        clock.done(step)
        if step == trainer.global_step:
            return clock
    raise RuntimeError(f"the training data gave fewer than {trainer.global_step} batches")


def measure_training(cfg: DictConfig, steps: int, warmup: int, repeats: int, compiled: bool, log) -> dict:
    """Images/s of ``train(cfg)`` over ``repeats`` windows of ``steps`` steps after ``warmup`` steps, then of
    the plain loop; ``first_steps_s``: the untimed first steps (DataLoader workers starting, compiling)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compile, cfg.trainer.max_steps = compiled, warmup + steps * repeats
        cfg.paths.output_dir = f"{cfg.paths.output_dir}/{'compiled' if compiled else 'eager'}"  # logs
        timer = {"_target_": f"{__name__}.Clock", "device": None, "warmup": warmup, "steps": steps}
        cfg.callbacks.step_timer = timer
    metrics = train(cfg)
    fit, images = Clock.fits.pop(), cfg.data.batch_size * steps
    lightning, plain = fit.rates(images), plain_loop(fit).rates(images)
    log(f"  compile={compiled}: Lightning {lightning['mean']:,.1f}, plain {plain['mean']:,.1f} images/s")
    return {
        "lightning": lightning,
        "plain": plain,
        "lightning_overhead": plain["mean"] / lightning["mean"] - 1.0,  # extra time per image
        "compiled": metrics["compile"],  # what ran, as metrics.json says
        "precision": metrics["precision"],
    }


def measure_loader(cfg: DictConfig, workers: list[int], steps: int, warmup: int, repeats: int) -> dict:
    """images/s of ``CIFARDataModule.train_dataloader()`` as ``cfg`` builds it (its sampler, per-image seeds and
    augmentation, collation, and on CUDA pinned memory and the copy), for each preset of configs/aug and each
    worker count: the most it can feed a training step. Untimed batches first: at least two per worker (what
    each prefetches)."""
    device = torch.device(local_device(cfg.trainer.accelerator).type)
    result, threads = {}, torch.get_num_threads()
    for aug in sorted(p.stem for p in (Path(CONFIG_DIR) / "aug").glob("*.yaml")):
        for n in workers:
            with open_dict(cfg):
                cfg.aug = compose_config([f"aug={aug}"], cfg.paths.output_dir).aug
                cfg.data.num_workers, cfg.data.device_aug = n, False
                cfg.data.pin_memory = device.type == "cuda"
            datamodule = build_datamodule(cfg)
            datamodule.setup("fit")
            loader = datamodule.train_dataloader()
            batches, clock = iter(loader), Clock(device, max(warmup, 2 * n), steps)
            # with 0 workers this process does a worker's work, on one thread as a worker does
            torch.set_num_threads(1)
            try:
                for step in range(1, clock.warmup + steps * repeats + 1):
                    x, y = next(batches)
                    x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    clock.done(step)
            finally:
                torch.set_num_threads(threads)
            del batches  # ends the workers
            rate = clock.rates(cfg.data.batch_size * steps)
            if n:  # the workers' CPU time is not this process's
                rate.pop("per_cpu_second")
            sampler = type(loader.sampler).__name__
            result[f"{aug}, {n} workers"] = rate | {"aug": aug, "workers": n, "sampler": sampler}
    return result
