"""Training throughput: ``vit_cifar.training.run.train`` itself (what ``python -m vit_cifar.train`` runs), then
one plain PyTorch loop with the objects that fit used, the same work per step without Lightning, its callbacks
or its loggers, so the difference is what those cost; and the training DataLoader alone."""

from __future__ import annotations

import copy
import statistics
import time
from itertools import islice, pairwise, product
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from vit_cifar.config.entry import CONFIG_DIR, compose_config
from vit_cifar.devices import local_device
from vit_cifar.training.run import build_datamodule, train


class Clock(L.Callback):
    """Wall-clock and process CPU time (which other processes slow far less) after ``warmup`` untimed steps,
    then every ``steps`` steps; on CUDA synchronised at those edges only, so that queued work is counted. As the
    fit's callback (``callbacks.step_timer``: training never imports it) it keeps its trainer and module."""

    fits: list[Clock] = []  # where train() hands its fit to the benchmark: Hydra builds the callback

    def __init__(self, device: torch.device | None = None, *, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps, self.marks = device, warmup, steps, []
        if device is not None:
            self.mark()

    def mark(self, after_step: int | None = None) -> None:
        """A mark now, or after step ``after_step`` (1-based) where a window ends."""
        if after_step is not None and (after_step < self.warmup or (after_step - self.warmup) % self.steps):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((time.perf_counter(), time.process_time()))

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer, self.module, self.device = trainer, pl_module, pl_module.device
        self.mark()
        Clock.fits.append(self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.mark(after_step=trainer.global_step)

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
    optimizer.load_state_dict(optimizer.state_dict())  # which moves the state to its parameters' device
    precision, clip = trainer.precision_plugin, trainer.gradient_clip_val
    # 16-mixed's scaler; a disabled one passes everything through (scale, unscale_, step, update)
    scaler = getattr(precision, "scaler", None) or torch.amp.GradScaler(device.type, enabled=False)
    trainer.training = True  # the DataModule augments (device_aug) and mixes training batches only
    clock = Clock(device, warmup=fit.warmup, steps=fit.steps)
    for step, (x, y) in enumerate(islice(datamodule.train_dataloader(), trainer.global_step), start=1):
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
        clock.mark(after_step=step)
    return clock


def measure_training(cfg: DictConfig, steps: int, warmup: int, repeats: int, compiled: bool) -> dict:
    """Images/s of ``train(cfg)``, then of the plain loop; ``first_steps_s``: the untimed first steps (DataLoader
    workers starting, compiling)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compile, cfg.trainer.max_steps = compiled, warmup + steps * repeats
        cfg.paths.output_dir = f"{cfg.paths.output_dir}/{'compiled' if compiled else 'eager'}"  # logs
        cfg.callbacks.step_timer = {"_target_": f"{__name__}.Clock", "warmup": warmup, "steps": steps}
    metrics = train(cfg)
    fit, images = Clock.fits.pop(), cfg.data.batch_size * steps
    lightning, plain = fit.rates(images), plain_loop(fit).rates(images)
    print(f"  compile={compiled}: Lightning {lightning['mean']:,.1f}, plain {plain['mean']:,.1f} images/s")
    overhead = plain["mean"] / lightning["mean"] - 1.0  # extra time per image
    ran = {"compiled": metrics["compile"], "precision": metrics["precision"]}  # as metrics.json says
    return {"lightning": lightning, "plain": plain, "lightning_overhead": overhead} | ran


def measure_loader(cfg: DictConfig, workers: list[int], steps: int, warmup: int, repeats: int) -> dict:
    """images/s of the DataModule's training loader as ``cfg`` builds it (on CUDA with the copy), per preset of
    configs/aug and worker count: the most it can feed a step. Untimed first: two batches per worker (prefetch)."""
    device = torch.device(local_device(cfg.trainer.accelerator).type)
    augs = sorted(p.stem for p in (Path(CONFIG_DIR) / "aug").glob("*.yaml"))
    result, threads = {}, torch.get_num_threads()
    # with 0 workers this process does a worker's work, on one thread as a worker does
    torch.set_num_threads(1)
    try:
        for aug, n in product(augs, workers):
            with open_dict(cfg):
                cfg.aug = compose_config([f"aug={aug}"], cfg.paths.output_dir).aug
                cfg.data.num_workers, cfg.data.device_aug = n, False
                cfg.data.pin_memory = device.type == "cuda"
            datamodule = build_datamodule(cfg)
            datamodule.setup("fit")
            loader, clock = (
                datamodule.train_dataloader(),
                Clock(device, warmup=max(warmup, 2 * n), steps=steps),
            )
            for step, (x, y) in enumerate(islice(loader, clock.warmup + steps * repeats), start=1):
                x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                clock.mark(after_step=step)
            rate = clock.rates(cfg.data.batch_size * steps)
            if n:  # the workers' CPU time is not this process's
                rate.pop("per_cpu_second")
            rate |= {"aug": aug, "workers": n, "sampler": type(loader.sampler).__name__}
            result[f"{aug}, {n} workers"] = rate
    finally:
        torch.set_num_threads(threads)
    return result
