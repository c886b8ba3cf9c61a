"""Building a class named by a config or a checkpoint, from the packages allowed to be named.

A checkpoint names the network it was trained with (``_target_`` plus arguments). Only classes of the right
kind under these packages may be named, so that loading a checkpoint cannot run arbitrary code, and a name
that is not such a class (a function, a module's ``__builtins__``) is refused by name.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from vit_cifar.errors import ConfigError

NETWORK_PACKAGES = ("vit_cifar.models.",)
OPTIMIZER_PACKAGES = ("torch.optim.",)
# What a name in each of these packages must be: a subclass of the base class (and what to call it).
KINDS = {
    NETWORK_PACKAGES: (nn.Module, "a network"),
    OPTIMIZER_PACKAGES: (torch.optim.Optimizer, "an optimiser"),
}


def locate(target: str, allowed: tuple[str, ...], key: str) -> type:
    """The class at dotted path ``target``, if it lies in one of the ``allowed`` packages and is of their kind."""
    if not isinstance(target, str) or not target.startswith(allowed):
        raise ConfigError(
            f"{key}._target_={target!r} is not allowed: it must be a class in {', '.join(allowed)}"
        )
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{key}._target_={target} does not exist") from None
    base, kind = KINDS.get(allowed, (object, "a"))
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{key}._target_={target} is not {kind} class: name one in {', '.join(allowed)}")
    return found


def build_network(cfg: dict) -> nn.Module:
    """Instantiate a network from its config dict (``_target_`` plus constructor arguments)."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return locate(cfg.get("_target_"), NETWORK_PACKAGES, "model")(**kwargs)
