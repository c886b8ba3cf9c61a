"""Building the network a config or a checkpoint names (``_target_`` plus arguments). Only network classes
under ``vit_cifar.models`` may be named, so that loading a checkpoint cannot run arbitrary code."""

import importlib

from torch import nn

from vit_cifar.errors import ConfigError

NETWORK_PACKAGES = ("vit_cifar.models.",)


def locate(target: str, allowed: tuple[str, ...] = NETWORK_PACKAGES, key: str = "model") -> type[nn.Module]:
    """The network class at dotted path ``target``, if it lies in one of the ``allowed`` packages."""
    if not isinstance(target, str) or not target.startswith(allowed):
        raise ConfigError(f"{key}._target_={target!r} is not allowed: name a class in {', '.join(allowed)}")
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{key}._target_={target} does not exist") from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(f"{key}._target_={target} is not a network class: name one in {', '.join(allowed)}")
    return found


def build_network(cfg: dict) -> nn.Module:
    """A network from its config dict; a ValueError of its constructor (arguments its arithmetic cannot use) is
    a bad value of the config, so one line and exit code 2."""
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    network = locate(cfg.get("_target_"))
    try:
        return network(**kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
