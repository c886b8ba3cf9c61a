"""The one place a train config's values are checked, before any work (train's pre-flight, or the start of
``train()`` for a config composed in-process): every key's allowed values, the rules that tie keys together, and
what the device cannot do. The model, data and aug groups declare their rules beside their code."""

import os
import re
from operator import gt, ne
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_cifar import devices
from vit_cifar.data import datamodule, gpu_aug, sources, transforms
from vit_cifar.errors import (
    COUNT,
    POSITIVE_INT,
    Choice,
    ConfigError,
    Flag,
    Number,
    Numbers,
    VitCifarError,
    check,
    show,
)
from vit_cifar.models import resnet, vit
from vit_cifar.models.registry import build_network

_ABSENT = object()
# test-time augmentation (train, evaluate, predict): the views of vit_cifar.inference.engine.tta_views
TTA = Choice((False, True, "none", "flip", "flip_shift"), hint="false: none, true: flip")


# Key -> allowed values. Keys absent from a config (another model, a switched-off group) are not checked; a
# number under any other key (one Lightning or a constructor takes, or one added with +key=) must be finite.
RULES = {
    "seed": Number(low=0, high=2**32 - 1, integer=True),
    "train": Flag(),
    "test": Flag(),
    "tta": TTA,
    "optim.lr": Number(low=0, low_open=True),
    "optim.weight_decay": Number(low=0),
    "optim.betas": Numbers(Number(low=0, high=1, high_open=True), 2),
    "optim.eps": Number(low=0, low_open=True),
    "optim.momentum": Number(low=0, high=1, high_open=True),
    "optim.nesterov": Flag(),
    # torch.optim.Muon's (optim=muon)
    "optim.adjust_lr_fn": Choice(("original", "match_rms_adamw", "spectral_unclamped"), optional=True),
    "scheduler.warmup_epochs": Number(low=0),
    "scheduler.min_lr": Number(low=0),
    "scheduler.decay": Choice(("cosine", "linear")),
    "scheduler.by": Choice(("steps", "time")),
    "scheduler.warmup_fraction": Number(low=0, high=1, high_open=True),
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.num_nodes": POSITIVE_INT,
    "trainer.log_every_n_steps": POSITIVE_INT,
    "trainer.check_val_every_n_epoch": Number(low=1, integer=True, optional=True),
    **{
        f"trainer.{key}": Number(low=0, optional=True, hint="a share in [0, 1] or a number of batches")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")
    },
    "trainer.gradient_clip_val": Number(low=0, optional=True),
    "trainer.gradient_clip_algorithm": Choice(("norm", "value"), optional=True),
    "trainer.precision": Choice(tuple(devices.PRECISIONS) + tuple(devices.PRECISION_ALIASES)),
    # the accelerators this project runs on (Lightning's tpu and hpu need packages it does not install)
    "trainer.accelerator": Choice(("auto", "cpu", "gpu", "cuda", "mps")),
    "optim.fused": Flag(optional=True, hint="null: fused on CUDA where the optimiser has a fused kernel"),
    "callbacks.finite_loss.check_every_n_steps": Number(low=1, integer=True, optional=True),
    "matmul_precision": Choice(devices.MATMUL_PRECISIONS, hint="high: TF32 matmuls on Ampere and newer GPUs"),
    "callbacks.tensorboard_figures.every_n_epochs": POSITIVE_INT,
    "callbacks.tensorboard_figures.num_images": COUNT,
    "callbacks.ema.decay": Number(low=0, high=1, high_open=True, hint="0.9995 averages ~2,000 steps"),
    "callbacks.ema.update_every_n_steps": POSITIVE_INT,
    "callbacks.ema.update_starting_at_step": Number(low=0, integer=True, optional=True),
    **{
        f"callbacks.{name}.save_top_k": Number(low=-1, integer=True, hint="-1 keeps every checkpoint")
        for name in ("model_checkpoint", "last_checkpoint")
    },
    "callbacks.progress_bar.metrics_every_n_steps": Number(low=1, integer=True, optional=True),
    "compile": devices.COMPILE,
    # data before model: model.img_size and model.num_classes are ${data...}, named where they are set
    **{f"data.{key}": rule for key, rule in datamodule.RULES.items()},
    **{f"model.{key}": rule for rules in (vit.RULES, resnet.RULES) for key, rule in rules.items()},
    **{f"aug.{key}": rule for key, rule in transforms.RULES.items()},
}


# Rules over two keys, checked once each key has passed its own rule (the ViT's own: its constructor's):
# (first key, broken(first, second), second key, what is wrong, how to fix it).
CROSS_RULES = [
    (
        "scheduler.warmup_epochs",
        gt,
        "trainer.max_epochs",
        "is longer than",
        "shorten the warmup or train longer",
    ),
    ("scheduler.min_lr", gt, "optim.lr", "is above", "the schedule decays from optim.lr down to min_lr"),
    (
        "model.num_classes",
        ne,
        "data.num_classes",
        "differs from",
        "set data.num_classes (the model follows it)",
    ),
    ("model.img_size", ne, "data.image_size", "differs from", "set data.image_size (the model follows it)"),
]


def validate_config(cfg: DictConfig, device: devices.DeviceSpec | None = None) -> None:
    """Raise :class:`ConfigError` for the first value outside its allowed range, or broken cross-key rule, or a
    combination that cannot train on ``device`` (default: the device ``trainer.accelerator`` selects here)."""
    values = {key: value for key in RULES if (value := _select(cfg, key)) is not _ABSENT}
    for key, value in values.items():
        check(key, value, RULES[key])
    _check_other_numbers(OmegaConf.to_container(cfg, resolve=False))
    target = _select(cfg, "optim._target_")
    optimizer = _optimizer_class(target) if target is not _ABSENT else None
    if values.get("optim.fused") is True and optimizer and not devices.has_fused_kernel(optimizer):
        raise ConfigError(
            f"optim.fused=true but {cfg.optim._target_} has no fused kernel: set optim.fused=null or false"
        )
    for first, broken, second, what, fix in CROSS_RULES:
        x, y = values.get(first), values.get(second)
        if None not in (x, y) and broken(x, y):
            raise ConfigError(f"{first}={x} {what} {second}={y}: {fix}")
    # what the GPU data path cannot do: it has no batched version of every policy or of repeated augmentation
    if values.get("data.device_aug") is True:
        if values.get("data.repeated_aug", 1) != 1:
            raise ConfigError(
                f"data.repeated_aug={values['data.repeated_aug']} has no GPU data path: "
                "set data.repeated_aug=1 or data.device_aug=false"
            )
        policy = values.get("aug.policy") or "none"
        if policy not in gpu_aug.BATCHED_POLICIES:
            raise ConfigError(
                f"aug.policy={policy} has no batched version for data.device_aug=true: "
                "use aug.policy=trivialaugment or none, or data.device_aug=false"
            )
    max_time = _select(cfg, "trainer.max_time")
    if isinstance(max_time, str) and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", max_time.strip()):
        raise ConfigError(
            f"trainer.max_time={show(max_time)} is not a duration: use DD:HH:MM:SS, e.g. 00:00:55:00"
        )
    accelerator = str(values.get("trainer.accelerator", "auto")).lower()
    processes = _processes(cfg, accelerator)
    if values.get("scheduler.by") == "time":
        if max_time in (None, _ABSENT):
            raise ConfigError(
                "scheduler.by=time needs a time budget: set trainer.max_time (DD:HH:MM:SS, e.g. 00:00:55:00)"
            )
        if (processes or 1) > 1:
            raise ConfigError(
                "scheduler.by=time follows one process's clock: use scheduler.by=steps with several processes"
            )
    if processes and values.get("data.batch_size", 0) % processes:  # the global batch, shared out
        raise ConfigError(
            f"data.batch_size={values['data.batch_size']} (the global batch) does not divide among {processes} "
            f"processes: set it to a multiple of {processes}"
        )
    # the device the choices are made for, read once (on a GPU machine a query of the driver)
    device = device or devices.local_device(accelerator)
    if accelerator in ("gpu", "cuda") and device.type != "cuda":
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: "
            "use trainer=cpu (or trainer.accelerator=cpu) on this machine"
        )
    _check_device_choices(cfg, values, device)
    _check_network(cfg, values, device)
    _check_data_root(cfg, values)


def _optimizer_class(target: Any) -> type:
    """The torch.optim class ``optim._target_`` names: Hydra would instantiate whatever it names, so a typo or a
    non-optimiser is refused before any work."""
    if not (isinstance(target, str) and target.startswith("torch.optim.")):
        raise ConfigError(
            f"optim._target_={show(target)} is not allowed: name an optimiser class in torch.optim "
            "(e.g. torch.optim.AdamW)"
        )
    try:
        found = get_class(target)
    except (ImportError, AttributeError, ValueError):  # not there, or not a class
        found = None
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(
            f"optim._target_={target} is not an optimiser class: name one in torch.optim (e.g. torch.optim.AdamW)"
        )
    return found


def _check_device_choices(cfg: DictConfig, values: dict, device: devices.DeviceSpec) -> None:
    """The choices that depend on the device, resolved as the run will resolve them, and what cannot work."""
    if "compile" in cfg and devices.resolve_compile(cfg.compile, device):
        backend = cfg.get("compile_backend", "inductor")
        backends = sorted(set(torch.compiler.list_backends(exclude_tags=())) | {"inductor"})
        if backend not in backends:
            raise ConfigError(f"compile_backend={show(backend)} is unknown: use one of {', '.join(backends)}")
        precision = devices.resolve_precision(values.get("trainer.precision", "32-true"), device)
        old_gpu = device.capability is not None and tuple(device.capability) < devices.NATIVE_BF16_CAPABILITY
        if backend == "inductor" and old_gpu and devices.compute_dtype(precision) == torch.bfloat16:
            major, minor = device.capability
            raise ConfigError(
                f"trainer.precision={precision} with compile on a GPU of compute capability {major}.{minor}: "
                "it has no bf16 units and Inductor does not compile bf16 for it; use "
                "trainer.precision=16-mixed (or auto), or compile=false"
            )


def _processes(cfg: DictConfig, accelerator: str) -> int | None:
    """How many processes the trainer config trains in (devices x nodes), counted as Lightning counts them,
    without initialising CUDA; None where Lightning will refuse the devices."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    asked = OmegaConf.select(cfg, "trainer.devices", default="auto")
    asked = OmegaConf.to_object(asked) if isinstance(asked, ListConfig) else asked
    if accelerator in ("auto", "gpu", "cuda") and CUDAAccelerator.is_available():
        kind = CUDAAccelerator
    elif accelerator in ("auto", "cpu"):
        kind = CPUAccelerator
    else:
        return None  # one Apple GPU, or a GPU asked for where there is none (said below)
    try:
        parsed = kind.parse_devices(kind.auto_device_count() if asked == "auto" else asked)
        per_node = len(kind.get_parallel_devices(parsed)) if parsed else 0
    except (MisconfigurationException, TypeError):  # Lightning's own message comes from the Trainer
        return None
    return per_node * OmegaConf.select(cfg, "trainer.num_nodes", default=1)


def _check_other_numbers(node: Any, key: str = "") -> None:
    """Every number under a key without a rule must be finite (``+optim.foo=inf``). Run on the unresolved
    container: an interpolation is a string there, its value checked at the key it points to."""
    if isinstance(node, dict | list):
        for name, child in node.items() if isinstance(node, dict) else enumerate(node):
            name = f"{key}.{name}".lstrip(".") if isinstance(node, dict) else f"{key}[{name}]"
            if name not in RULES and name != "hydra":
                _check_other_numbers(child, name)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        check(key, node, Number())


def _check_data_root(cfg: DictConfig, values: dict) -> None:
    """What ``data.root`` holds against the keys that depend on it: only an archive file has a checksum, and
    torchvision's CIFAR is 32x32 and is not resized (image folders and archives are, on decode)."""
    root = Path(os.path.expanduser(str(OmegaConf.select(cfg, "data.root", default=""))))
    if values.get("data.sha256") and not sources.is_archive(root):
        raise ConfigError(
            f"data.sha256 checks an image-folder archive, but data.root={root} is not an archive file: "
            "point data.root at the .tar/.tar.gz, or set data.sha256=null"
        )
    size, source = values.get("data.image_size"), values.get("data.source")
    if size in (None, 32) or source not in ("auto", "torchvision"):
        return
    try:
        source = sources.resolve_source(source, root)
    except VitCifarError:
        return  # the run says what is wrong with the data
    if source == "torchvision":
        dataset = OmegaConf.select(cfg, "data.dataset", default="cifar10")
        raise ConfigError(
            f"data.image_size={size} but torchvision's {dataset} images are 32x32 and are not resized: use "
            "data.image_size=32, or an image folder or archive (data.root=...), which is resized on decode"
        )


def _check_network(cfg: DictConfig, values: dict, device: devices.DeviceSpec) -> None:
    """Build the network on the meta device (shapes only, no memory): what its constructor refuses is refused
    before any work. Then refuse a training that needs more memory than the device has: the weights with their
    gradients and AdamW's two moments, and the outputs of the layers with weights for a batch (a lower bound)."""
    if "model" not in cfg:
        return
    net_config = OmegaConf.to_container(cfg.model, resolve=True)
    size, depth = values.get("data.image_size") or 32, net_config.get("depth")
    try:
        if isinstance(depth, int) and depth > 2:  # blocks alike: two measured, the rest extrapolated (fast)
            (w1, all1, top), (w2, all2, _) = (_measure({**net_config, "depth": d}, size) for d in (1, 2))
            weights, outputs = w1 + (depth - 1) * (w2 - w1), all1 + (depth - 1) * (all2 - all1)
        else:
            weights, outputs, top = _measure(net_config, size)
    except (TypeError, ValueError, RuntimeError):
        return  # arguments the network does not take, or input it cannot run: the run names them
    if values.get("data.batch_size") is None:
        return
    precision = devices.resolve_precision(values.get("trainer.precision", "32-true"), device)
    batch, eval_batch = values["data.batch_size"], values.get("data.eval_batch_size", 1)
    need = 16 * weights + devices.compute_dtype(precision).itemsize * max(batch * outputs, eval_batch * top)
    have, where = _device_memory(device)
    if have and need > have:
        raise ConfigError(
            f"data.image_size={size}, data.batch_size={batch} and data.eval_batch_size={eval_batch} with this "
            f"model ({weights:,} weights) need at least {need / 2**30:,.1f} GiB, more than the "
            f"{have / 2**30:,.1f} GiB of {where}: use a smaller data.image_size, batch size or model"
        )


def _measure(net_config: dict, size: int) -> tuple[int, int, int]:
    """A network's weights, and the values its layers with weights output for one image (all, and the
    largest), from one pass on the meta device."""
    with torch.device("meta"):
        net = build_network(net_config)
    outputs: list[int] = []
    for module in net.modules():
        if next(module.parameters(recurse=False), None) is not None:
            module.register_forward_hook(lambda m, args, out: outputs.append(getattr(out, "numel", int)()))
    net(torch.empty(1, net_config.get("in_chans", 3), size, size, device="meta"))
    return sum(p.numel() for p in net.parameters()), sum(outputs), max(outputs, default=0)


def _device_memory(device: devices.DeviceSpec) -> tuple[int | None, str]:
    """The memory the device has, and what it is called (a GPU's, or this machine's RAM)."""
    if device.type == "cuda":  # as the driver reports it (asking torch would initialise CUDA here)
        return device.memory, "memory on the GPU"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "memory on this machine"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): not checked
        return None, ""


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
