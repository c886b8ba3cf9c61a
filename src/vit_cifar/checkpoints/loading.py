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
from vit_cifar.models.registry import NETWORK_PACKAGES, locate


@dataclass
class LoadedClassifier:
    """A network rebuilt from a checkpoint, in eval mode, with what the checkpoint says about it."""

    net: nn.Module
    classes: list[str]
    net_config: dict
    run_config: dict = field(default_factory=dict)
    path: Path | None = None
    epoch: int | None = None  # epochs trained when the checkpoint was written (1-based)


def epochs_done(epoch: int) -> int:
    """The one place that numbers epochs for people: from 1, so that after Lightning's epoch 0 one epoch is done.
    Lightning itself (its progress bar, the logs' ``epoch`` column, a checkpoint's ``epoch``) counts from 0."""
    return int(epoch) + 1


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
    network_class(net_config, f"checkpoint {path}")  # every reader, resuming too, meets a bad name here
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return checkpoint, net_config, state


def network_class(net_config: dict, where: str) -> type[nn.Module]:
    """The network class a file's config names (only one of ours: a file chooses no other code to run)."""
    try:
        return locate(net_config.get("_target_"), NETWORK_PACKAGES, "model")
    except VitCifarError as err:
        raise CheckpointError(f"{where} names a network that cannot be built: {err}") from err


def describe_mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One line on how a state dict differs from a network's, or None when it fits."""
    own = net.state_dict()
    found = {
        "shapes differ": [
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ],
        "tensors missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
    }
    return "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in found.items() if keys) or None


def build_with_weights(net_config: dict, state: dict[str, torch.Tensor], where: str) -> nn.Module:
    """The network ``net_config`` describes holding the tensors ``state``, in eval mode; one CheckpointError
    starting with ``where`` (the file) when the file contradicts itself. Built first on the meta device (shapes,
    no memory) and checked against the tensors: a small file that declares a huge network allocates nothing."""
    target = network_class(net_config, where)
    kwargs = {k: v for k, v in net_config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            shape_only = target(**kwargs)
    # TypeError: an argument it does not take (another version of vit-cifar, or an edit); else its invariants
    except (VitCifarError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where} names a network that cannot be built: {first_line(err)}") from err
    mismatch = describe_mismatch(shape_only, state)
    if mismatch:
        raise CheckpointError(f"{where} does not fit the {target.__name__} it describes: {mismatch}")
    net = target(**kwargs)  # now as large as the tensors the file holds, and no larger
    net.load_state_dict(state)
    return net.eval()


def load_classifier(path: str | Path) -> LoadedClassifier:
    """Rebuild the network a vit-cifar checkpoint was trained with and load its weights."""
    path = Path(path)
    checkpoint, net_config, state = read_training_checkpoint(path)
    net = build_with_weights(net_config, state, f"checkpoint {path}")
    num_classes = getattr(net, "num_classes", None)
    classes = checkpoint.get("classes") or [str(i) for i in range(num_classes or 0)]
    if num_classes is not None and len(classes) != num_classes:
        raise CheckpointError(
            f"checkpoint {path} names {len(classes)} classes but its network has {num_classes} outputs: "
            "it was not written by python -m vit_cifar.train, or was edited"
        )
    epoch = checkpoint.get("epoch")
    epochs_trained = epochs_done(epoch) if epoch is not None else None
    return LoadedClassifier(
        net, list(classes), net_config, checkpoint.get("config") or {}, path, epochs_trained
    )
