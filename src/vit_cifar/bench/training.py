"""How fast vit-cifar trains and infers, beside a plain PyTorch loop and timm, on this machine.

Claims (the goals of issue #6; each result file says which were met on its device):
  1. Training: the Lightning system (``ClassifierModule``, ``CIFARDataModule``, ``Trainer``) costs at most 5%
     more time per image than a plain PyTorch loop, written below, with the same network object, data
     pipeline, AdamW parameter groups, warmup-cosine schedule, gradient clipping and precision.
  2. Inference: our ViT-Tiny is at least as fast as timm's ``VisionTransformer`` of identical shape (img 32,
     patch 4, dim 192, depth 12, heads 3, no qkv bias, patch-embedding LayerNorm, 10 classes), both eager.
  3. Augmentation: images/s of the per-image CPU pipeline per DataLoader worker, against the batched GPU
     data path (``data.device_aug``), which needs no workers.
  4. ``--loader``: the training DataLoader a run uses (``CIFARDataModule.train_dataloader``), per worker count
     and ``aug`` preset, and the per-image cost of seeding: whether CPU workers can feed a GPU.
Evidence: ``benchmarks/results/<date>-<device>.json``, one file per run, holding the device, threads, load
average, library versions, git SHA, the whole configuration and every repeat; docs/performance.md sums up.
The measured figures and their conditions are in docs/performance.md and benchmarks/results/.
Hardware: whatever runs it, named in each file. CPU figures from a shared, loaded machine carry its load
average and are to be re-run on a quiet one.

Method: warmup steps first (not timed), then a timed window of ``--steps`` steps, ``--repeats`` times, with
the variants interleaved and alternating (Lightning, plain, plain, Lightning, ...) so that a change of load
hits both alike. On CUDA the device is synchronised at the edges of a window, so that queued work is
counted, and never inside it.
Figures are the mean and standard deviation over the repeats. Training uses synthetic uint8 images unless
``--data`` names a dataset (these operations cost the same whatever the pictures show).

    python -m vit_cifar.benchmark                  # this machine's accelerator, the seed recipe
    python -m vit_cifar.benchmark --device-aug     # train with the GPU data path
    python -m vit_cifar.benchmark --compile        # torch.compile our network and timm's
    python -m vit_cifar.benchmark --tiny           # a tiny model and a few steps: does it all run?
    python -m vit_cifar.benchmark --loader --data /path/to/cifar10-jpeg.tar.gz   # the training DataLoader

argparse, not Hydra: the benchmark runs where only torch, torchvision and lightning are installed. The
recipe is read from ``configs/``, so it cannot drift from training's.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import default_collate

from vit_cifar.bench.settings import AUG_BATCHES, CONFIG_DIR, OVERHEAD_GOAL, group
from vit_cifar.bench.timing import Stopwatch, WindowTimer, autocast_for, rates, summary
from vit_cifar.data import CIFARDataModule
from vit_cifar.data.datamodule import seeded_torch_rng
from vit_cifar.data.gpu_aug import DeviceBatches
from vit_cifar.data.samplers import SeededShuffleSampler
from vit_cifar.errors import ConfigError
from vit_cifar.models.registry import build_network
from vit_cifar.training.callbacks import FiniteLossGuard, ProgressBar
from vit_cifar.training.module import ClassifierModule
from vit_cifar.training.monitoring import GradNormMonitor
from vit_cifar.training.optim import param_groups, warmup_cosine_lr, warmup_steps_for
from vit_cifar.training.speed import (
    apply_speed_settings,
    optimizer_kwargs_for,
    precision_for_trainer,
)

# ------------------------------------------------------------------------------------------ training


def make_datamodule(s: dict, batches: int = 0, **data) -> CIFARDataModule:
    """The training data as ``python -m vit_cifar.train`` builds them: all training images (no validation
    split), the seed augmentation, the configured workers; synthetic images unless ``--data``. ``data``:
    other CIFARDataModule arguments; ``batches``: at least that many batches of synthetic images."""
    recipe = s["recipe"]
    # One epoch covers a whole training run (no epoch boundary inside a window) and an augmentation one.
    needed = s["batch_size"] * max(s["warmup"] + s["steps"] + 1, AUG_BATCHES, batches)
    source = {"source": "synthetic", "synthetic": {"train_per_class": -(-needed // 10), "test_per_class": 1}}
    if s["data"]:
        source = {"root": s["data"], "cache_dir": os.environ.get("VIT_CIFAR_CACHE", ".cache/vit_cifar")}
    recipe_data = {
        "batch_size": s["batch_size"],
        "eval_batch_size": s["eval_batch_size"],
        "num_workers": 0 if s["tiny"] else recipe["data"]["num_workers"],
        "mean": recipe["data"]["mean"],
        "std": recipe["data"]["std"],
        "aug": recipe["aug"],
        "device_aug": s["device_aug"],
    }
    dm = CIFARDataModule(**source, download=False, val_size=0, **(recipe_data | data))
    dm.setup("fit")
    return dm


def make_module(s: dict) -> ClassifierModule:
    recipe = s["recipe"]
    module = ClassifierModule(
        net=recipe["model"],
        optimizer=recipe["optim"],
        scheduler=recipe["scheduler"],
        label_smoothing=float(recipe["aug"]["label_smoothing"]),
    )
    module.device_spec = s["device_spec"]
    apply_speed_settings(module.net, s["device_spec"], compile=s["compile"], matmul_precision="high")
    return module


# Steps between the reads of device values on the host, in both loops: Lightning's default log_every_n_steps,
# which training keeps; the finite-loss guard, grad-norm monitor, progress bar and loggers read then.
READ_EVERY = 50


def lightning_window(s: dict, dm: CIFARDataModule, module: ClassifierModule, initial: dict) -> Stopwatch:
    """The time of ``steps`` training steps of ``Trainer.fit``, as a training run does them: with the callbacks
    that act during steps (the finite-loss guard, the grad-norm monitor, the progress bar and the learning-rate
    monitor) and a CSV logger (training also writes TensorBoard events, every 50 steps), without checkpoints
    (written at epoch ends, outside the window)."""
    module.net.load_state_dict(initial)
    timer = WindowTimer(s["warmup"], s["steps"], s["device"])
    precision, plugins = precision_for_trainer(s["precision"], s["device"].type)
    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(
            accelerator=s["device"].type,
            devices=1,
            precision=precision,
            plugins=plugins,
            max_steps=s["warmup"] + s["steps"],
            gradient_clip_val=s["recipe"]["gradient_clip_val"],
            gradient_clip_algorithm="norm",
            log_every_n_steps=READ_EVERY,
            callbacks=[
                timer,
                LearningRateMonitor(logging_interval="step"),
                FiniteLossGuard(),
                GradNormMonitor(),
                ProgressBar(leave=False),
            ],
            logger=CSVLogger(logs, name="csv", version=""),
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        trainer.fit(module, datamodule=dm)
    return timer.watch


def plain_window(s: dict, dm: CIFARDataModule, net: nn.Module, initial: dict) -> Stopwatch:
    """The same steps as :func:`lightning_window` in a plain loop: same network object, batches, augmentation
    on the device, AdamW groups, per-step schedule, clipping and precision, and the same work of its callbacks:
    a finite-loss record on the device, and every ``READ_EVERY`` steps a read of it, of the loss (progress bar
    and logger) and of the gradient norm before clipping."""
    device, recipe = s["device"], s["recipe"]
    net.to(device).load_state_dict(initial)
    net.train()
    opt_cfg = {k: v for k, v in recipe["optim"].items() if not k.startswith("_")}
    lr, weight_decay = float(opt_cfg.pop("lr")), float(opt_cfg.pop("weight_decay"))
    opt_cfg["betas"] = tuple(opt_cfg["betas"])
    opt_cfg = optimizer_kwargs_for(torch.optim.AdamW, opt_cfg, s["device_spec"])
    optimizer = torch.optim.AdamW(param_groups(net, weight_decay), lr=lr, **opt_cfg)
    total = s["warmup"] + s["steps"]
    # As in a Lightning run stopped by max_steps (max_epochs -1, counted as 1).
    warmup = warmup_steps_for(total, 1, float(recipe["scheduler"]["warmup_epochs"]))
    schedule = partial(
        warmup_cosine_lr,
        total_steps=total,
        warmup_steps=warmup,
        peak_lr=lr,
        min_lr=float(recipe["scheduler"]["min_lr"]),
    )
    scheduler = LambdaLR(optimizer, lambda step: schedule(step) / lr)
    loss_fn = partial(F.cross_entropy, label_smoothing=float(recipe["aug"]["label_smoothing"]))
    autocast, use_scaler = autocast_for(s["precision"], device)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    # The training batches and their on-device transform, as CIFARDataModule gives them to Lightning.
    if dm.device_augment is not None:
        images, labels = dm.train_set.images.to(device), dm.train_set.labels.to(device)
        batches = DeviceBatches(images, labels, s["batch_size"])
        augment = partial(dm.device_augment, generator=batches.generator)
    else:
        batches = dm.train_dataloader()
        augment = dm.mix if dm.mix is not None else (lambda x, y: (x, y))
    watch = Stopwatch(device)
    if s["warmup"] == 0:
        watch.start()
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for step, (x, y) in enumerate(batches, start=1):
        x, y = augment(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        with autocast:
            loss = loss_fn(net(x), y)
        read = (step - 1) % READ_EVERY == 0  # Lightning's global_step is step - 1 here
        bad |= ~torch.isfinite(loss.detach())
        if read and bool(bad):
            raise RuntimeError(f"non-finite loss by step {step}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if read:
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            _ = float(torch.nn.utils.get_total_norm(grads)), float(loss)  # grad-norm monitor, logger and bar
        nn.utils.clip_grad_norm_(net.parameters(), recipe["gradient_clip_val"])
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if step == s["warmup"]:
            watch.start()
        if step == total:
            return watch.stop()
    raise RuntimeError(f"the training data gave fewer than {total} batches")


def measure_training(s: dict, log) -> dict:
    dm = make_datamodule(s)
    module = make_module(s)
    initial = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    images = s["batch_size"] * s["steps"]
    watches: dict[str, list[Stopwatch]] = {"lightning": [], "plain": []}
    windows = {
        "lightning": lambda: lightning_window(s, dm, module, initial),
        "plain": lambda: plain_window(s, dm, module.net, initial),
    }
    for r in range(s["repeats"]):
        # Alternate which goes first, so that neither always meets the machine in the same state.
        for name in ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning"):
            torch.manual_seed(r)
            watches[name].append(windows[name]())
        log(
            f"  train repeat {r + 1}/{s['repeats']}: lightning {images / watches['lightning'][-1].wall:,.1f} "
            f"img/s, plain {images / watches['plain'][-1].wall:,.1f} img/s"
        )
    lightning, plain = rates(watches["lightning"], images), rates(watches["plain"], images)
    overhead = plain["mean"] / lightning["mean"] - 1.0  # extra time per image
    result = {
        "unit": "images/s (forward, backward, clipping, optimiser and schedule step, data and augmentation)",
        "data_path": "device_aug (uint8 on the device, batched augmentation)"
        if s["device_aug"]
        else f"DataLoader, per-image augmentation in {dm.num_workers} worker(s)",
        "lightning": lightning,
        "plain": plain,
        "lightning_overhead": overhead,
        "lightning_overhead_per_repeat": [
            lw.wall / pw.wall - 1.0 for lw, pw in zip(watches["lightning"], watches["plain"], strict=True)
        ],
        "goal": f"lightning_overhead <= {OVERHEAD_GOAL}",
        "met": overhead <= OVERHEAD_GOAL,
    }
    if "per_cpu_second" in lightning:
        cpu_lightning, cpu_plain = lightning["per_cpu_second"]["mean"], plain["per_cpu_second"]["mean"]
        result["lightning_overhead_cpu_time"] = cpu_plain / cpu_lightning - 1.0
    return result


# ------------------------------------------------------------------------------------------ optimiser


def measure_optimizer(s: dict, log) -> dict:
    """AdamW steps alone over the network's parameter groups with fixed gradients: the fused kernel against
    the foreach implementation (PyTorch's default on CUDA), the evidence for ``optim.fused: null``'s choice.
    Steps per second; each window synchronises the device at its edges only."""
    device, recipe = s["device"], s["recipe"]
    net = build_network(recipe["model"]).to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    steps = max(s["steps"], 10)
    watches: dict[str, list[Stopwatch]] = {"fused": [], "foreach": []}
    for r in range(s["repeats"]):
        for name in watches:
            optimizer = torch.optim.AdamW(
                param_groups(net, 0.05),
                lr=1e-3,
                **({"fused": True} if name == "fused" else {"foreach": True}),
            )
            optimizer.step()  # warm: the state is allocated
            watch = Stopwatch(device)
            watch.start()
            for _ in range(steps):
                optimizer.step()
            watches[name].append(watch.stop())
        log(
            f"  optimiser repeat {r + 1}/{s['repeats']}: "
            + ", ".join(f"{n} {steps / w[-1].wall:,.1f} steps/s" for n, w in watches.items())
        )
    result = {"unit": "AdamW steps/s over the network's parameters"}
    result |= {name: rates(w, steps) for name, w in watches.items()}
    result["fused_over_foreach"] = result["fused"]["mean"] / result["foreach"]["mean"]
    return result


# ------------------------------------------------------------------------------------------ inference


def timm_vit(model_cfg: dict) -> tuple[nn.Module | None, str]:
    """timm's VisionTransformer of our shape (``vit_cifar.inference.interop``, the one mapping), or None and why not."""
    try:
        from vit_cifar.inference.interop import build_timm_vit

        return build_timm_vit(model_cfg), "identical shape and parameter count (vit_cifar.inference.interop)"
    except ImportError:
        return None, "timm is not installed (pip install -e '.[bench]'): comparison skipped"
    except ConfigError as err:  # e.g. the conv tokenizer, which timm's ViT cannot express
        return None, f"no timm equivalent ({err}): comparison skipped"


def inference_window(net: nn.Module, x: torch.Tensor, s: dict, autocast) -> Stopwatch:
    watch = Stopwatch(x.device)
    with torch.inference_mode(), autocast:
        for _ in range(s["warmup"]):
            net(x)
        watch.start()
        for _ in range(s["steps"]):
            net(x)
        return watch.stop()


def measure_inference(s: dict, log) -> dict:
    device, model_cfg = s["device"], s["recipe"]["model"]
    ours = build_network(model_cfg)
    theirs, note = timm_vit(model_cfg)
    nets = {"ours": ours} if theirs is None else {"ours": ours, "timm": theirs}
    for net in nets.values():
        net.to(device).eval()
        if s["compile"]:
            net.compile()
    x = torch.randn(s["eval_batch_size"], 3, model_cfg["img_size"], model_cfg["img_size"], device=device)
    autocast, _ = autocast_for(s["precision"], device)
    images = s["eval_batch_size"] * s["steps"]
    watches: dict[str, list[Stopwatch]] = {name: [] for name in nets}
    for r in range(s["repeats"]):
        for name, net in nets.items():
            watches[name].append(inference_window(net, x, s, autocast))
        log(
            f"  inference repeat {r + 1}/{s['repeats']}: "
            + ", ".join(f"{n} {images / w[-1].wall:,.1f} img/s" for n, w in watches.items())
        )
    result = {
        "unit": f"images/s, batch {s['eval_batch_size']}, forward only, inference_mode",
        "params": {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()},
        "ours": rates(watches["ours"], images),
        "timm_note": note,
    }
    if theirs is not None:
        result["timm"] = rates(watches["timm"], images)
        result["ours_over_timm"] = result["ours"]["mean"] / result["timm"]["mean"]
        result["goal"] = "ours_over_timm >= 1 (eager)"
        result["met"] = result["ours_over_timm"] >= 1.0 if not s["compile"] else None
    return result


# ------------------------------------------------------------------------------------------ augmentation


def rate(fn, images: int, repeats: int, device: torch.device) -> dict:
    """images/s of ``fn`` (which handles ``images`` images), after one untimed call."""
    fn()
    watches = []
    for _ in range(repeats):
        watch = Stopwatch(device)
        watch.start()
        fn()
        watches.append(watch.stop())
    return rates(watches, images)


def measure_augmentation(s: dict) -> dict:
    """The per-image CPU pipeline as one DataLoader worker runs it (one thread), against the uint8 path."""
    aug_cfg = dict(s, device_aug=True)
    dm_cpu, dm_dev = make_datamodule(dict(s, device_aug=False)), make_datamodule(aug_cfg)
    batch, device = s["batch_size"], s["device"]
    n_batches = 2 if s["tiny"] else AUG_BATCHES
    n = batch * n_batches
    items = list(
        SeededShuffleSampler(dm_cpu.train_set, seed=0)
    )  # (index, seed): seeded per image, as in training

    def per_image(dataset) -> None:  # a worker: __getitem__ per image, then collate per batch
        for b in range(n_batches):
            default_collate([dataset[item] for item in items[b * batch : (b + 1) * batch]])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        cpu_pipeline = rate(lambda: per_image(dm_cpu.train_set), n, s["repeats"], torch.device("cpu"))
        uint8_index = rate(lambda: per_image(dm_dev.train_set), n, s["repeats"], torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    images, labels = dm_dev.train_set.images[:n].to(device), dm_dev.train_set.labels[:n].to(device)
    batches = DeviceBatches(images, labels, batch)

    def device_epoch(transform=None) -> None:
        for x, y in batches:
            if transform is not None:
                transform(x, y)

    where = f"on {device.type}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    return {
        "unit": "images/s",
        "cpu_pipeline_per_worker": cpu_pipeline
        | {"what": "TrivialAugmentWide, ToDtype, Normalize, RandomErasing per image, collation; 1 thread"},
        "uint8_index_per_worker": uint8_index
        | {"what": "device_aug through a DataLoader worker: index uint8 images, collate; 1 thread"},
        "device_batches": rate(device_epoch, n, s["repeats"], device)
        | {"what": f"device_aug's DeviceBatches: shuffled uint8 batches sliced {where}, no DataLoader"},
        "device_augment": rate(lambda: device_epoch(dm_dev.device_augment), n, s["repeats"], device)
        | {"what": f"device_aug's batched augmentation and MixUp/CutMix {where}, batch {batch}"},
    }


# ------------------------------------------------------------------------------------------ the training loader


def measure_loader(s: dict, log) -> dict:
    """images/s of the training DataLoader as a run uses it, ``CIFARDataModule.train_dataloader``: persistent
    workers, the SeededShuffleSampler's order and per-image seeds, per-image augmentation, collation, and on
    CUDA pinned memory and the copy to the device; for each worker count and ``aug`` preset. The training step
    is left out, so this is the most the loader can feed."""
    result = {"unit": "images/s by the wall clock", "seeding_us_per_image": seeding_cost()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (for 0 workers)
    try:
        for aug in sorted(p.stem for p in (CONFIG_DIR / "aug").glob("*.yaml")):
            for workers in s["workers"]:
                result[f"{aug}, {workers} workers"] = loader_rate(s, aug, workers, log)
    finally:
        torch.set_num_threads(threads)
    return result


def loader_rate(s: dict, aug: str, workers: int, log) -> dict:
    """One iterator: untimed batches first (at least the two each worker prefetches), then ``repeats`` windows
    of ``steps`` batches."""
    device, warmup = s["device"], max(s["warmup"], 2 * workers)
    dm = make_datamodule(
        s,
        warmup + s["steps"] * s["repeats"] + 1,
        num_workers=workers,
        aug=group(f"aug/{aug}"),
        pin_memory=device.type == "cuda",
    )
    loader = dm.train_dataloader()
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    watches = []
    for _ in range(s["repeats"]):
        watch = Stopwatch(device)
        watch.start()
        for _ in range(s["steps"]):
            x, y = next(batches)
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        watches.append(watch.stop())
    del batches  # ends the workers
    # With 0 workers the training process does all the work: its rate per CPU-second is what one worker does
    # on a core of its own, whatever else runs on the machine.
    images = s["batch_size"] * s["steps"]
    rate = rates(watches, images) if workers == 0 else summary([images / w.wall for w in watches])
    cpu = rate.get("per_cpu_second")
    log(
        f"  loader, aug={aug}, {workers} workers: {rate['mean']:,.0f} ± {rate['std']:,.0f} images/s"
        + (f", {cpu['mean']:,.0f} per CPU-second" if cpu else "")
    )
    sampler = type(loader.sampler).__name__
    return rate | {"aug": aug, "workers": workers, "sampler": sampler, "pin_memory": loader.pin_memory}


def seeding_cost(calls: int = 2000) -> dict:
    """Microseconds per image of per-image seeding: in a worker (the CPU generator alone), in the training
    process (``num_workers=0``: its state is also saved and restored), and ``torch.manual_seed``, which also
    seeds every device backend (what per-image seeding called until 2026-12)."""
    state = torch.get_rng_state()

    def in_process(k: int) -> None:
        with seeded_torch_rng(k):
            pass

    ways = {"worker": torch.default_generator.manual_seed, "training_process": in_process}
    ways["torch.manual_seed"] = torch.manual_seed
    cost = {}
    for name, seed in ways.items():
        watch = Stopwatch(torch.device("cpu"))
        watch.start()
        for k in range(calls):
            seed(k)
        cost[name] = 1e6 * watch.stop().wall / calls
    torch.set_rng_state(state)
    return cost
