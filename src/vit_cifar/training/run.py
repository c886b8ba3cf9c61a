"""Train (and test) a classifier: ``python -m vit_cifar.train [overrides]``.

``train(cfg)`` is the whole job and returns its metrics; ``main`` only adds Hydra and one-line errors.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from vit_cifar.analysis.evaluation import evaluate_from_train_config
from vit_cifar.analysis.report import summary_line
from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import epochs_done
from vit_cifar.checkpoints.resume import SafeCheckpointIO, check_fits, keep_logged_history, resolve_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.config.schema import validate_config
from vit_cifar.data import CIFARDataModule
from vit_cifar.data.gpu_aug import BATCHED_POLICIES
from vit_cifar.devices import (
    CPU,
    DeviceSpec,
    local_device,
    resolve_compile,
    resolve_device_aug,
    resolve_precision,
)
from vit_cifar.errors import ConfigError
from vit_cifar.inference.engine import describe_device
from vit_cifar.training.callbacks import run_clock_of
from vit_cifar.training.module import ClassifierModule
from vit_cifar.training.monitoring import log_final_hparams
from vit_cifar.training.runlock import check_run_folder_free, run_folder_lock


def build_datamodule(cfg: DictConfig, device: DeviceSpec = CPU) -> CIFARDataModule:
    """The DataModule of ``cfg.data``, with ``data.device_aug: auto`` resolved for ``device``."""
    aug = OmegaConf.to_container(cfg.aug, resolve=True)
    batched = (aug.get("policy") or "none") in BATCHED_POLICIES and cfg.data.repeated_aug == 1
    device_aug = resolve_device_aug(cfg.data.device_aug, device, batched)
    return hydra.utils.instantiate(cfg.data, aug=aug, device_aug=device_aug, _convert_="all")


def build_trainer(cfg: DictConfig, choices_for: DeviceSpec, runs_on: DeviceSpec) -> L.Trainer:
    """The Trainer of ``cfg.trainer``, its precision resolved for ``choices_for`` (a test passes a CUDA description
    to run CUDA's choice on CPU); ``runs_on``: the device ``trainer.accelerator`` selects here."""
    callbacks_cfg = cfg.get("callbacks") or {}
    ckpt_cfg = callbacks_cfg.get("model_checkpoint")
    if ckpt_cfg is not None and cfg.data.val_size == 0:
        ckpt_cfg.monitor = None  # no validation split to select on: keep the last epoch (the seed's protocol)
    precision = resolve_precision(cfg.trainer.precision, choices_for)
    plugins = [SafeCheckpointIO()]  # atomic checkpoint writes, weights_only loads
    if precision == "16-mixed":
        # the plugin Lightning builds for CUDA (float16 and a GradScaler) on CPU too, where Lightning's
        # precision="16-mixed" would train in bf16-mixed
        precision = None
        plugins.append(MixedPrecision("16-mixed", device="cuda" if runs_on.type == "cuda" else "cpu"))

    def instantiate_all(section: DictConfig | None) -> list:  # skipping the entries set to null
        return [hydra.utils.instantiate(entry) for entry in (section or {}).values() if entry is not None]

    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_all(callbacks_cfg),
        logger=instantiate_all(cfg.get("logger")) or False,
        precision=precision,
        plugins=plugins,
    )


class CompileCounter:
    """Whether a compiled network's training forward calls really ran compiled, and how many did not.

    Forward pre-hooks on the network's children read ``torch.compiler.is_compiling()``: on the children because
    only the ``forward`` frame, where they run, falls back to eager silently at the recompile limit. Inside a
    compiled frame the hook only writes a flag (no read, so Dynamo adds no guard); no tensor is touched."""

    def __init__(self, net: nn.Module) -> None:
        self.ran_compiled = False
        self.eager = 0
        for child in list(net.children()) or [net]:
            child.register_forward_pre_hook(self.hook)

    def hook(self, module: nn.Module, args) -> None:
        if not module.training:
            return
        if torch.compiler.is_compiling():
            self.ran_compiled = True
        else:
            self.eager += 1

    def report(self) -> dict:
        return {"compile": self.ran_compiled and self.eager == 0, "eager_calls": self.eager}


def train(cfg: DictConfig, device: DeviceSpec | None = None) -> dict:
    """Fit, test the selected checkpoint, write ``metrics.json`` in the run folder and return the metrics.

    ``device``: the device that the device-dependent choices (precision ``auto``, ``optim.fused: null``,
    ``compile: auto``) are made for; default the one ``trainer.accelerator`` selects. The tests pass a CUDA
    description to train with CUDA's choices on CPU."""
    start = time.perf_counter()
    runs_on = local_device(cfg.trainer.accelerator)  # asked once: on a GPU machine a query of the driver
    choices_for = device or runs_on
    validate_config(cfg, device=choices_for)
    ckpt_path = resolve_ckpt_path(cfg)  # ckpt_path=last: this run folder's last.ckpt
    if not cfg.train:
        if ckpt_path is None:
            raise ConfigError("train=false needs ckpt_path=<checkpoint file> to test")
        # python -m vit_cifar.evaluate's evaluation, into this run folder; the network comes from the checkpoint
        return evaluate_from_train_config(cfg, ckpt_path)
    resume_step = None
    if ckpt_path is not None:
        resume_step = check_fits(ckpt_path, cfg)  # before any work
        ckpt_path = str(ckpt_path)
        if OmegaConf.select(cfg, "logger.tensorboard") is not None:
            with open_dict(cfg):  # TensorBoard hides what the stopped run logged from the resumed step on
                cfg.logger.tensorboard.purge_step = resume_step
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, choices_for)
    module = ClassifierModule(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optim, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        label_smoothing=float(cfg.aug.label_smoothing),
        tta=cfg.get("tta", False),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg, choices_for, runs_on)
    if resume_step is not None:
        keep_logged_history(trainer, resume_step)  # the CSV log keeps the rows before the checkpoint
    if clock := run_clock_of(trainer):
        clock.started = start
    module.device_spec = choices_for
    torch.set_float32_matmul_precision(cfg.matmul_precision)  # the speed switches: docs/performance.md
    compile_counter = None
    if resolve_compile(cfg.compile, choices_for):
        torch.compiler.reset()  # each job of a -m sweep (one process) starts clear of the last one's recompiles
        compile_counter = CompileCounter(module.net)
        # Lazily, at the first forward. Static shapes: the training batch has one shape (the last, shorter batch
        # is dropped). nn.Module.compile keeps the parameter names, so checkpoints are the same as eager ones.
        module.net.compile(backend=cfg.compile_backend, dynamic=False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    callback = trainer.checkpoint_callback
    # the checkpoint to test: best by validation accuracy, or the last one when there is no validation
    ckpt_path = (callback.best_model_path or None) if callback is not None else None

    metrics = {
        "params": sum(p.numel() for p in module.net.parameters()),
        "epochs": int(trainer.callback_metrics.get("epochs", trainer.current_epoch)),
        "steps": trainer.global_step,
        "seed": cfg.seed,
        "data": datamodule.description,
        "skipped_files": len(datamodule.skipped_files),  # unreadable images left out with data.skip_bad=true
        "precision": str(trainer.precision),
        "compile": False,
        "matmul_precision": cfg.matmul_precision,
        "pipeline_check": pipeline_check(cfg),
        "run_folder": str(Path(cfg.paths.output_dir).resolve()),
    }
    if "val/acc" in trainer.callback_metrics:
        metrics["val_acc_last_epoch"] = float(trainer.callback_metrics["val/acc"])
        metrics["val_images"] = int(trainer.callback_metrics["val/images"])  # counted over all ranks
    if callback is not None and callback.monitor == "val/acc" and callback.best_model_score is not None:
        metrics["val_acc_best"] = float(callback.best_model_score)
    if cfg.test:
        if not ckpt_path:
            print("no checkpoint was saved (fast_dev_run?): testing the weights in memory")
        # verbose=False: the summary line below reports the result, rounded; Lightning's table printed 9 digits
        results = trainer.test(
            module, datamodule=datamodule, ckpt_path=ckpt_path or None, weights_only=True, verbose=False
        )
        metrics["test_acc"] = float(results[0]["test/acc"])
        metrics["test_loss"] = float(results[0]["test/loss"])
        metrics["test_images"] = int(results[0]["test/images"])  # counted, once each, over all ranks
        metrics["checkpoint"] = ckpt_path
        if ckpt_path:  # counted like "epochs": the checkpoint holds the weights after this many epochs
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            metrics["checkpoint_after_epoch"] = epochs_done(saved["epoch"])
    if compile_counter is not None:  # what really ran compiled, not what was asked for
        metrics |= {"compile_backend": cfg.compile_backend, **compile_counter.report()}
    # Named after testing: naming a GPU initialises CUDA in this process, after which the ddp_notebook strategy
    # (DDP inside a notebook, notebooks/train_kaggle_colab.ipynb) could not fork its processes for the test.
    metrics["device"] = describe_device(trainer.strategy.root_device)
    if trainer.world_size > 1:
        metrics["device"] += f" x{trainer.world_size}"
    clock = run_clock_of(trainer)  # the whole run's, across resumes; without it, this process's
    metrics["wall_s"] = round(clock.elapsed_s() if clock else time.perf_counter() - start, 1)
    log_final_hparams(trainer, cfg, metrics)  # TensorBoard's hparams table: settings beside final metrics

    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(summary_line(metrics))
    return metrics


def pipeline_check(cfg: DictConfig) -> bool:
    """Whether the trainer only runs part of the data (debug=fdr|limit|overfit, limit_*_batches < all): a check
    of the pipeline rather than a result."""
    trainer = cfg.trainer
    limited = [trainer.get(f"limit_{split}_batches") not in (None, 1.0) for split in ("train", "val", "test")]
    return bool(trainer.get("fast_dev_run") or trainer.get("overfit_batches") or any(limited))


def check_train_command(cfg: DictConfig, multirun: bool) -> None:
    """train's pre-flight (``config.entry.preflight``), on the composed config with its ``hydra`` node, before
    Hydra makes the run folder: the values, then the folder Hydra is about to make (a sweep's, or a run's that
    no other training may be using), then the checkpoint ``ckpt_path`` names, resolved in that run folder."""
    validate_config(cfg)
    if multirun:
        check_output_place(cfg.hydra.sweep.dir, "hydra.sweep.dir", folder=True)
        return
    check_output_place(cfg.hydra.run.dir, "hydra.run.dir", folder=True)
    check_run_folder_free(cfg.hydra.run.dir)
    if cfg.get("ckpt_path"):
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = os.path.abspath(cfg.hydra.run.dir)
        # so that ${hydra:runtime.output_dir} resolves, as it will in the job
        HydraConfig.instance().set_config(cfg)
        resolve_ckpt_path(cfg)


def train_in_locked_folder(cfg: DictConfig) -> dict:
    """:func:`train`, holding the run folder's lock: a second training into the same folder is refused."""
    with run_folder_lock(cfg.paths.output_dir):
        return train(cfg)
