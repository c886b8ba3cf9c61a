"""A training's checkpoints: how they are written (:class:`SafeCheckpointIO`), which one ``ckpt_path`` names,
whether it fits the run that wants to resume from it, and the logged history a resumed run keeps.

``ckpt_path=last`` means the ``last.ckpt`` of *this run's* checkpoint folder,
``callbacks.last_checkpoint.dirpath`` (by default ``<run folder>/checkpoints``). The run folder is
``hydra.run.dir``, so a killed run is resumed by repeating its command with
``hydra.run.dir=<its folder> ckpt_path=last``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import (
    describe_mismatch,
    epochs_done,
    read_checkpoint,
    read_training_checkpoint,
)
from vit_cifar.errors import CheckpointError, ConfigError, VitCifarError
from vit_cifar.models.registry import build_network


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes and ``weights_only=True`` loads, always.

    Why not the default: it writes through an fsspec transaction whose temporary file lives in the system
    temp folder, so when that is another filesystem (a local /tmp, checkpoints on a network disk) the final
    move is a copy into the target, and nothing is fsynced: a kill or a crash can leave a truncated
    ``last.ckpt``. The run folder is a local path (``config.entry.check_output_place``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # weights_only whatever the caller asked: a checkpoint file must never be able to run code. On the CPU;
        # Lightning moves the weights and optimiser state to the device.
        return read_checkpoint(path)


def resolve_ckpt_path(cfg: DictConfig) -> Path | None:
    """The file ``ckpt_path`` names (None when unset); a :class:`ConfigError` when it does not exist."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        return None
    if ckpt_path == "last":  # written by the last_checkpoint callback
        folder = OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath", default=None)
        path = Path(folder or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last but {path} does not exist: resume a run with hydra.run.dir=<its folder> "
                "ckpt_path=last, or give ckpt_path=<checkpoint file>"
            )
        return path
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist: give the path of a .ckpt file, or ckpt_path=last"
        )
    return path


def check_fits(path: Path, cfg: DictConfig) -> int:
    """Read ``path`` safely and check that this run's model can load it and that it holds the training state;
    one :class:`CheckpointError` naming the difference otherwise. Returns the optimiser steps it has done."""
    checkpoint, saved, state = read_training_checkpoint(path)
    if not checkpoint.get("optimizer_states"):
        raise CheckpointError(
            f"checkpoint {path} holds weights only, not the training state: it cannot be resumed"
        )
    wanted = OmegaConf.to_container(cfg.model, resolve=True)
    mismatch = _mismatch(wanted, state)
    if mismatch:
        # Name the settings that change the weights' shapes (not, say, a dropout rate that also differs).
        differ = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
        shaping = [k for k in differ if _mismatch({**saved, k: wanted.get(k)}, state)]
        detail = (
            "; ".join(f"model.{k}={saved.get(k)} there, {wanted.get(k)} here" for k in shaping) or mismatch
        )
        raise CheckpointError(
            f"checkpoint {path} is of another model ({detail}): use the checkpoint's model settings "
            "(model.num_classes follows data.num_classes), or another checkpoint"
        )
    steps = int(checkpoint.get("global_step", 0))
    rank_zero_info(f"resuming from {path}: {epochs_done(checkpoint['epoch'])} epochs, {steps} steps done")
    return steps


def _mismatch(net_config: dict, state: dict) -> str | None:
    """How ``state`` differs from the network ``net_config`` builds (None: it fits)."""
    try:
        return describe_mismatch(build_network({k: v for k, v in net_config.items() if v is not None}), state)
    except (VitCifarError, TypeError):
        return "the model cannot be built from this run's config"


def keep_logged_history(trainer: L.Trainer, resume_step: int) -> None:
    """Keep, in a run resumed from step ``resume_step``, the rows of ``csv/metrics.csv`` logged before that step:
    Lightning's CSVLogger starts the file afresh, losing the history ``evaluate`` plots. Rows from that step on
    are dropped, as the resumed run logs them again (TensorBoard's ``purge_step`` does the same there)."""
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or not trainer.is_global_zero:
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows = list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []
        kept = [row for row in rows if not row.get("step") or int(float(row["step"])) < resume_step]
        with warnings.catch_warnings():  # its "previous log files will be deleted" is not true here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = logger.experiment  # made now, which deletes metrics.csv
        writer.metrics.extend(kept)  # written back now; the resumed run's rows follow, under one header
        writer.save()
