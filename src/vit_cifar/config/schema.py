"""The configuration's schema in one place: every checked key with its allowed values, and the rules that tie
keys together. ``validate_config`` runs before Hydra creates a run folder (``training.run.check_train_command``, called by ``config.entry.preflight``) and again
at the top of ``train()``; a bad value stops with one line naming the key and what is allowed (exit code 2).

Constructors (the ViT, the transforms, the DataModule) keep their own checks as a second line of defence for
callers that skip the config; their ranges are the same as here.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_cifar.data.datamodule import SOURCES
from vit_cifar.data.transforms import POLICIES
from vit_cifar.devices import (
    MATMUL_PRECISIONS,
    NATIVE_BF16_CAPABILITY,
    PRECISION_ALIASES,
    PRECISIONS,
    DeviceSpec,
    has_fused_kernel,
    local_device,
    resolve_compile,
    resolve_precision,
)
from vit_cifar.errors import ConfigError

_ABSENT = object()
# The one wording of a clock-driven schedule without a budget (the config check and the module both raise it).
NO_TIME_BUDGET = "scheduler.by=time needs a time budget: set trainer.max_time (e.g. 00:00:55:00, DD:HH:MM:SS)"


@dataclass(frozen=True)
class Number:
    """An int or float within bounds; ``integer`` rejects 2.5, ``optional`` also accepts null."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value rather than low <= value
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "is not set"
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return "has the wrong type"
        if self.integer and int(value) != value:
            return "is not an integer"
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return None if above and below else "is out of range"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            bounds = ""
        return f"{'null or ' if self.optional else ''}{kind} {bounds}".strip()


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        return None if (value is None and self.optional) or value in self.options else "is unknown"

    def describe(self) -> str:
        return f"one of {', '.join(o if isinstance(o, str) else _show(o) for o in self.options)}"


@dataclass(frozen=True)
class Flag:
    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "has the wrong type"

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Hex:
    digits: int

    def problem(self, value: Any) -> str | None:
        ok = value is None or (
            isinstance(value, str) and re.fullmatch(f"[0-9a-fA-F]{{{self.digits}}}", value)
        )
        return None if ok else "is not a checksum"

    def describe(self) -> str:
        return f"null or {self.digits} hexadecimal digits"


Rule = Number | Choice | Flag | Hex

POSITIVE_INT = Number(low=1, integer=True)
COUNT = Number(low=0, integer=True)
PROBABILITY = Number(low=0, high=1)
OPEN_PROBABILITY = Number(low=0, high=1, high_open=True)  # 1 would drop or smooth away everything

# Key -> allowed values. Keys absent from a config (another model, a switched-off group) are not checked.
RULES: dict[str, Rule] = {
    "seed": Number(low=0, high=2**32 - 1, integer=True),
    "train": Flag(),
    "test": Flag(),
    "optim.lr": Number(low=0, low_open=True),
    "optim.weight_decay": Number(low=0),
    "scheduler.warmup_epochs": Number(low=0),
    "scheduler.min_lr": Number(low=0),
    "scheduler.by": Choice(("steps", "time")),
    "scheduler.warmup_fraction": Number(low=0, high=1, high_open=True),
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.num_nodes": POSITIVE_INT,
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.gradient_clip_val": Number(low=0, optional=True),
    "trainer.gradient_clip_algorithm": Choice(("norm", "value"), optional=True),
    "trainer.precision": Choice(tuple(PRECISIONS) + tuple(PRECISION_ALIASES)),
    # the accelerators this project runs on (Lightning's tpu and hpu need packages it does not install)
    "trainer.accelerator": Choice(("auto", "cpu", "gpu", "cuda", "mps")),
    "optim.fused": Choice((True, False), optional=True),
    "callbacks.finite_loss.check_every_n_steps": Number(low=1, integer=True, optional=True),
    "data.source": Choice(SOURCES),
    "data.num_classes": Number(low=2, integer=True),
    "data.image_size": POSITIVE_INT,
    "data.val_size": COUNT,
    "data.split_seed": COUNT,
    "data.train_subset": Number(low=1, integer=True, optional=True),
    "data.test_subset": Number(low=1, integer=True, optional=True),
    "data.batch_size": POSITIVE_INT,
    "data.eval_batch_size": POSITIVE_INT,
    "data.num_workers": Number(low=0, integer=True, optional=True),
    "data.download": Flag(),
    "data.skip_bad": Flag(),
    "data.sha256": Hex(64),
    "data.device_aug": Flag(),
    # compile and optim.fused (strings or booleans) are checked by vit_cifar.devices and training/speed.py
    "matmul_precision": Choice(MATMUL_PRECISIONS),
    "model.img_size": POSITIVE_INT,
    "model.patch_size": POSITIVE_INT,
    "model.in_chans": POSITIVE_INT,
    "model.num_classes": POSITIVE_INT,
    "model.embed_dim": POSITIVE_INT,
    "model.depth": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT,
    "model.mlp_ratio": Number(low=0, low_open=True),
    "model.qkv_bias": Flag(),
    "model.drop_rate": OPEN_PROBABILITY,
    "model.attn_drop_rate": OPEN_PROBABILITY,
    "model.drop_path_rate": OPEN_PROBABILITY,
    "model.tokenizer": Choice(("patch", "conv")),
    "aug.policy": Choice(POLICIES, optional=True),
    "aug.random_crop_padding": COUNT,
    "aug.hflip_p": PROBABILITY,
    "aug.erasing_p": PROBABILITY,
    "aug.mix_prob": PROBABILITY,
    "aug.mixup_alpha": Number(low=0),
    "aug.cutmix_alpha": Number(low=0),
    "aug.label_smoothing": OPEN_PROBABILITY,
    "callbacks.tensorboard_figures.every_n_epochs": POSITIVE_INT,
    "callbacks.tensorboard_figures.num_images": COUNT,
}


def _rule(keys: tuple[str, ...], broken: Callable[..., bool], message: str) -> Callable[[dict], str | None]:
    """A rule over ``keys``: when ``broken(*values)``, ``message`` formatted with the values is the error."""

    def rule(values: dict) -> str | None:
        args = [values[k] for k in keys]
        return message.format(*args) if broken(*args) else None

    rule.keys = keys  # type: ignore[attr-defined]
    return rule


# Rules over several keys, checked once each key has passed its own rule. The wording is the constructors'.
CROSS_RULES = [
    _rule(
        ("model.embed_dim", "model.num_heads"),
        lambda dim, heads: dim % heads,
        "model.embed_dim={} is not divisible by model.num_heads={}: choose heads that divide the width "
        "(e.g. 192 with 3, 4, 6 or 12 heads)",
    ),
    _rule(
        ("model.patch_size", "model.img_size"),
        lambda patch, img: img % patch,
        "model.patch_size={} does not divide model.img_size={}: choose a patch size that divides the image "
        "(e.g. 2, 4 or 8 for 32x32)",
    ),
    _rule(
        ("scheduler.warmup_epochs", "trainer.max_epochs"),
        lambda warmup, epochs: warmup > epochs,
        "scheduler.warmup_epochs={} is longer than trainer.max_epochs={}: shorten the warmup or train longer",
    ),
    _rule(
        ("scheduler.min_lr", "optim.lr"),
        lambda low, peak: low > peak,
        "scheduler.min_lr={} is above optim.lr={}: the schedule decays from optim.lr down to min_lr",
    ),
    _rule(
        ("model.num_classes", "data.num_classes"),
        lambda model, data: model != data,
        "model.num_classes={} differs from data.num_classes={}: set data.num_classes (the model follows it)",
    ),
    _rule(
        ("model.img_size", "data.image_size"),
        lambda model, data: model != data,
        "model.img_size={} differs from data.image_size={}: set data.image_size (the model follows it)",
    ),
]


def validate_config(cfg: DictConfig, device: DeviceSpec | None = None) -> None:
    """Raise :class:`ConfigError` for the first value outside its allowed range, or broken cross-key rule, or a
    combination that cannot train on ``device`` (default: the device ``trainer.accelerator`` selects here)."""
    values: dict[str, Any] = {}
    for key, rule in RULES.items():
        value = _select(cfg, key)
        if value is _ABSENT:
            continue
        problem = rule.problem(value)
        if problem:
            raise ConfigError(f"{key}={_show(value)} {problem}: use {rule.describe()}")
        values[key] = value
    for rule in CROSS_RULES:
        if all(values.get(k) is not None for k in rule.keys):
            message = rule(values)
            if message:
                raise ConfigError(message)
    max_time = _select(cfg, "trainer.max_time")
    if values.get("scheduler.by") == "time" and max_time in (None, _ABSENT):
        raise ConfigError(NO_TIME_BUDGET)
    if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", max_time.strip()):
        raise ConfigError(
            f"trainer.max_time={_show(max_time)} is not a duration: use DD:HH:MM:SS, e.g. 00:00:55:00"
        )
    _check_device_choices(cfg, device)


def _check_device_choices(cfg: DictConfig, device: DeviceSpec | None) -> None:
    """The choices that depend on the device, resolved as the run will resolve them, and what cannot work."""
    if "compile" in cfg:
        device = device or local_device(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
        compiled = resolve_compile(cfg.compile, device)  # the same one-line error as at the start of a run
        backend = cfg.get("compile_backend", "inductor")
        if compiled and backend not in _compile_backends():
            raise ConfigError(
                f"compile_backend={_show(backend)} is unknown: use one of {', '.join(_compile_backends())}"
            )
        precision = OmegaConf.select(cfg, "trainer.precision", default=None)
        if precision is not None and device.type == "cuda" and device.capability is not None:
            resolved = resolve_precision(precision, device)
            if (
                compiled
                and backend == "inductor"
                and resolved.startswith("bf16")
                and tuple(device.capability) < NATIVE_BF16_CAPABILITY
            ):
                major, minor = device.capability
                raise ConfigError(
                    f"trainer.precision={resolved} with compile on a GPU of compute capability {major}.{minor}: "
                    "it has no bf16 units and Inductor does not compile bf16 for it; use "
                    "trainer.precision=16-mixed (or auto), or compile=false"
                )
    target = OmegaConf.select(cfg, "optim._target_", default=None)
    if OmegaConf.select(cfg, "optim.fused", default=None) is True and isinstance(target, str):
        module_name, _, name = target.rpartition(".")
        try:
            optimizer = getattr(importlib.import_module(module_name), name, None)
        except (ImportError, ValueError):
            optimizer = None  # the run names the bad target itself
        if optimizer is not None and not has_fused_kernel(optimizer):
            raise ConfigError(
                f"optim.fused=true but {target} has no fused kernel: set optim.fused=null or false"
            )


def _compile_backends() -> list[str]:
    import torch

    return sorted(set(torch.compiler.list_backends(exclude_tags=())) | {"inductor"})


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return (
        repr(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)
