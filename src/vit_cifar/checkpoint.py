"""Loading trained networks back from checkpoints, safely (no code runs) and with one clear error when they
do not fit."""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vit_cifar.errors import CheckpointError, ConfigError, VitCifarError, first_line
from vit_cifar.module import build_network


@dataclass
class LoadedClassifier:
    """A network rebuilt from a checkpoint, in eval mode, with what the checkpoint says about it."""

    net: nn.Module
    classes: list[str]
    net_config: dict
    run_config: dict = field(default_factory=dict)
    path: Path | None = None
    epoch: int | None = None  # epochs trained when the checkpoint was written (1-based)


def required_ckpt_path(cfg) -> str:
    """``cfg.ckpt_path`` of a command that needs a checkpoint; a one-line error when it is not given."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path=<checkpoint file> is required: the .ckpt written by python -m vit_cifar.train"
        )
    return str(cfg.ckpt_path)


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, so a file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass ckpt_path=<path to a .ckpt file>")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({first_line(err)[:200]}): it is truncated, corrupt, "
            "or holds objects other than tensors and plain values"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def describe_mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One line on how a state dict differs from a network's, or None when it fits."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts)


def load_classifier(path: str | Path, expect: dict | None = None) -> LoadedClassifier:
    """Rebuild the network a vit-cifar checkpoint was trained with and load its weights.

    ``expect`` optionally names network arguments the caller needs (e.g. ``{"num_classes": 10}``); a checkpoint
    that disagrees gets one error naming the differences.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    net_config = hparams.get("net")
    if not isinstance(net_config, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is not a vit-cifar training checkpoint (it has no network config): "
            "use a .ckpt written by python -m vit_cifar.train"
        )
    for key, wanted in (expect or {}).items():
        if net_config.get(key) != wanted:
            raise CheckpointError(
                f"checkpoint {path} is a {_name(net_config)} with {key}={net_config.get(key)}, but {wanted} "
                f"is needed here: use a checkpoint trained with model.{key}={wanted}"
            )
    try:
        net = build_network(net_config)
    except VitCifarError as err:
        raise CheckpointError(f"checkpoint {path} names a network that cannot be built: {err}") from err
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    mismatch = describe_mismatch(net, state)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {_name(net_config)} it describes: {mismatch}"
        )
    net.load_state_dict(state)
    net.eval()
    num_classes = getattr(net, "num_classes", None)
    classes = checkpoint.get("classes") or [str(i) for i in range(num_classes or 0)]
    epoch = checkpoint.get("epoch")
    return LoadedClassifier(
        net=net,
        classes=list(classes),
        net_config=net_config,
        run_config=checkpoint.get("config") or {},
        path=path,
        epoch=int(epoch) + 1 if epoch is not None else None,
    )


def _name(net_config: dict) -> str:
    return str(net_config.get("_target_", "network")).rsplit(".", 1)[-1]
