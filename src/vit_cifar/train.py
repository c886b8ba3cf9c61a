"""Train (and test) a classifier: ``python -m vit_cifar.train [overrides]``.

``train(cfg)`` is the whole job and returns its metrics; ``main`` only adds Hydra and one-line errors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vit_cifar.ckpt_io import SafeCheckpointIO
from vit_cifar.cli import hydra_main, run_cli
from vit_cifar.data import CIFARDataModule
from vit_cifar.errors import ConfigError
from vit_cifar.evaluate import evaluate_from_train_config
from vit_cifar.fileio import write_atomic
from vit_cifar.inference import describe_device as describe_device_of
from vit_cifar.module import ClassifierModule
from vit_cifar.monitoring import log_final_hparams
from vit_cifar.resume import check_fits, resolve_ckpt_path
from vit_cifar.speed import apply_speed_settings, resolve_precision
from vit_cifar.sweep import validation_accuracy
from vit_cifar.validate import validate_config


def instantiate_all(section: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks or logger group, skipping those set to null."""
    if not section:
        return []
    return [hydra.utils.instantiate(entry) for entry in section.values() if entry is not None]


def build_datamodule(cfg: DictConfig) -> CIFARDataModule:
    return hydra.utils.instantiate(
        cfg.data, aug=OmegaConf.to_container(cfg.aug, resolve=True), _convert_="all"
    )


def build_module(cfg: DictConfig) -> ClassifierModule:
    module = ClassifierModule(
        net=OmegaConf.to_container(cfg.model, resolve=True),
        optimizer=OmegaConf.to_container(cfg.optim, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        label_smoothing=float(cfg.aug.label_smoothing),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def build_trainer(cfg: DictConfig, has_validation: bool) -> L.Trainer:
    callbacks_cfg = cfg.get("callbacks") or {}
    ckpt_cfg = callbacks_cfg.get("model_checkpoint")
    if ckpt_cfg is not None and not has_validation:
        # No validation split to select on: keep the last epoch (the seed's final-epoch protocol).
        ckpt_cfg.monitor = None
        ckpt_cfg.filename = "epoch{epoch:03d}"
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_all(callbacks_cfg),
        logger=instantiate_all(cfg.get("logger")) or False,
        precision=precision,
        plugins=[SafeCheckpointIO()],  # atomic checkpoint writes, weights_only loads
    )


def selected_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint to test: best by validation accuracy, or the last one when there is no validation."""
    callback = trainer.checkpoint_callback
    return (callback.best_model_path or None) if callback is not None else None


def describe_device(trainer: L.Trainer) -> str:
    """The device as reports name it (evaluation's wording), and how many processes trained."""
    name = describe_device_of(trainer.strategy.root_device)
    return f"{name} x{trainer.world_size}" if trainer.world_size > 1 else name


def train(cfg: DictConfig) -> dict:
    """Fit, test the selected checkpoint, write ``metrics.json`` in the run folder and return the metrics."""
    start = time.perf_counter()
    validate_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg)  # ckpt_path=last: this run folder's last.ckpt
    if not cfg.train:
        if ckpt_path is None:
            raise ConfigError("train=false needs ckpt_path=<checkpoint file> to test")
        # python -m vit_cifar.evaluate's evaluation, into this run folder; the network comes from the checkpoint
        return evaluate_from_train_config(cfg, ckpt_path)
    if ckpt_path is not None:
        check_fits(ckpt_path, cfg, resume=True)  # one clear error before any work
        ckpt_path = str(ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, has_validation=cfg.data.val_size > 0)
    speed = apply_speed_settings(
        module.net,
        trainer.strategy.root_device,
        cfg.get("compile", "auto"),
        cfg.get("matmul_precision", "high"),
    )

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    ckpt_path = selected_checkpoint(trainer)

    metrics = {
        "params": sum(p.numel() for p in module.net.parameters()),
        "epochs": trainer.current_epoch,
        "seed": cfg.seed,
        "data": datamodule.description,
        "skipped_files": len(datamodule.skipped_files),  # unreadable images left out with data.skip_bad=true
        "precision": str(trainer.precision),
        **speed,
    }
    if "val/acc" in trainer.callback_metrics:
        metrics["val_acc_last_epoch"] = float(trainer.callback_metrics["val/acc"])
    callback = trainer.checkpoint_callback
    if callback is not None and callback.monitor == "val/acc" and callback.best_model_score is not None:
        metrics["val_acc_best"] = float(callback.best_model_score)
    if cfg.test:
        if not ckpt_path:
            print("no checkpoint was saved (fast_dev_run?): testing the weights in memory")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path or None, weights_only=True)
        metrics["test_acc"] = float(results[0]["test/acc"])
        metrics["test_loss"] = float(results[0]["test/loss"])
        metrics["test_images"] = len(datamodule.test_set)
        metrics["checkpoint"] = ckpt_path
        if ckpt_path:  # 1-based, like "epochs": the checkpoint holds the weights after this many epochs
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            metrics["checkpoint_after_epoch"] = int(saved["epoch"]) + 1
    # Named after testing: naming a GPU initialises CUDA in this process, after which the ddp_notebook strategy
    # (DDP inside a notebook, notebooks/train_kaggle_colab.ipynb) could not fork its processes for the test.
    metrics["device"] = describe_device(trainer)
    metrics["wall_s"] = round(time.perf_counter() - start, 1)
    log_final_hparams(trainer, cfg, metrics)  # TensorBoard's hparams table: settings beside final metrics

    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(summary_line(metrics))
    return metrics


def summary_line(m: dict) -> str:
    parts = [f"test_acc={m['test_acc']:.4f}" if "test_acc" in m else "not tested"]
    if "checkpoint_after_epoch" in m:
        parts.append(f"checkpoint after epoch {m['checkpoint_after_epoch']}")
    parts += [
        f"{m['epochs']} epochs",
        f"seed {m['seed']}",
        m["data"],
        f"{m['params']:,} params",
        m["device"],
        f"{m['wall_s']:.0f} s",
    ]
    return " | ".join(parts)


@hydra_main("train", check=validate_config)
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(train, cfg)
    return validation_accuracy(metrics)  # what a Hydra sweeper maximises: never the test accuracy


if __name__ == "__main__":
    main()
