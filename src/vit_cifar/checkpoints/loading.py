"""Loading trained networks back from checkpoints, safely (no code runs) and with one clear error when they
do not fit."""

from __future__ import annotations

import inspect
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vit_cifar.errors import CheckpointError, ConfigError, VitCifarError, first_line
from vit_cifar.models.registry import NETWORK_PACKAGES, build_network, locate


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


def beside_run(ckpt_path: str | Path, name: str) -> Path:
    """``<run>/<name>`` for a checkpoint in a training run's ``<run>/checkpoints/`` folder; for a checkpoint
    elsewhere, ``<name>`` in the checkpoint's own folder. Where a command writes when not told."""
    folder = Path(ckpt_path).resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / name


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


def read_training_checkpoint(path: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """A checkpoint written by ``python -m vit_cifar.train``, read safely: the whole checkpoint, its network's
    config (``_target_`` and arguments) and its network's tensors (without the module's ``net.`` prefix)."""
    checkpoint = read_checkpoint(path)
    net_config = (checkpoint.get("hyper_parameters") or {}).get("net")
    if not isinstance(net_config, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"checkpoint {path} is not a vit-cifar training checkpoint (it has no network config): "
            "use a .ckpt written by python -m vit_cifar.train"
        )
    try:  # every command that reads a checkpoint meets a name that is not a network class here
        locate(net_config.get("_target_"), NETWORK_PACKAGES, "model")
    except VitCifarError as err:
        raise CheckpointError(f"checkpoint {path} names a network that cannot be built: {err}") from err
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return checkpoint, net_config, state


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
    checkpoint, net_config, state = read_training_checkpoint(path)
    for key, wanted in (expect or {}).items():
        if net_config.get(key) != wanted:
            raise CheckpointError(
                f"checkpoint {path} is a {_name(net_config)} with {key}={net_config.get(key)}, but {wanted} "
                f"is needed here: use a checkpoint trained with model.{key}={wanted}"
            )
    # Built first on the meta device (shapes, no memory) and checked against the file's tensors: a small file
    # that declares a huge network is refused before anything is allocated.
    with torch.device("meta"):
        shape_only = _build(net_config, path)
    mismatch = describe_mismatch(shape_only, state)
    if mismatch:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {_name(net_config)} it describes: {mismatch}"
        )
    net = _build(net_config, path)  # now as large as the tensors the file holds, and no larger
    net.load_state_dict(state)
    net.eval()
    num_classes = getattr(net, "num_classes", None)
    classes = checkpoint.get("classes") or [str(i) for i in range(num_classes or 0)]
    if num_classes is not None and len(classes) != num_classes:
        raise CheckpointError(
            f"checkpoint {path} names {len(classes)} classes but its network has {num_classes} outputs: "
            "it was not written by python -m vit_cifar.train, or was edited"
        )
    epoch = checkpoint.get("epoch")
    return LoadedClassifier(
        net=net,
        classes=list(classes),
        net_config=net_config,
        run_config=checkpoint.get("config") or {},
        path=path,
        epoch=int(epoch) + 1 if epoch is not None else None,
    )


def _build(net_config: dict, path: Path) -> nn.Module:
    """The network of a checkpoint's config; one line naming the file for arguments it cannot take."""
    # read_training_checkpoint has checked the name
    target = locate(net_config.get("_target_"), NETWORK_PACKAGES, "model")
    accepted = inspect.signature(target).parameters
    unknown = sorted(k for k in net_config if not k.startswith("_") and k not in accepted)
    if unknown:
        raise CheckpointError(
            f"checkpoint {path} gives its {_name(net_config)} arguments it does not take ({', '.join(unknown)}): "
            "it was written by another version of vit-cifar, or edited"
        )
    try:
        return build_network(net_config)
    except (VitCifarError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} names a network that cannot be built: {err}") from err


def _name(net_config: dict) -> str:
    return str(net_config.get("_target_", "network")).rsplit(".", 1)[-1]
