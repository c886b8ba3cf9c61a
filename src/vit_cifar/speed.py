"""Speed switches besides the data path: precision, ``torch.compile``, TF32 matmuls and fused AdamW.

Each is a config value (see ``configs/train.yaml``, ``configs/optim/adamw.yaml`` and docs/performance.md); the
functions here turn those values into settings for the device the run is on.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
from torch import nn

from vit_cifar.errors import ConfigError

COMPILE_CHOICES = ("auto", True, False)
MATMUL_PRECISIONS = ("highest", "high", "medium")


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on GPUs that support it, 16-mixed on other CUDA GPUs, 32-true elsewhere."""
    if str(precision) != "auto":
        return str(precision)
    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if not on_cuda:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def resolve_compile(value: str | bool, device: torch.device) -> bool:
    """``compile``: true, false, or auto, which compiles on CUDA (where Triton is installed) and not on CPU.

    Why by device rather than by a measurement at start-up: on CPU, compiling ViT-Tiny's training step takes
    minutes on a few cores, longer than a CPU run is meant to last; on a GPU the eager step is a long chain of
    small kernels whose launch cost compiling removes, and the compile (about a minute) is repaid within a few
    epochs. ``python -m vit_cifar.benchmark --compile`` measures both on any device.
    """
    if value not in COMPILE_CHOICES:
        raise ConfigError(f"compile={value!r} is not one of auto, true, false")
    if value == "auto":
        return device.type == "cuda" and importlib.util.find_spec("triton") is not None
    return bool(value)


def apply_speed_settings(
    net: nn.Module, device: torch.device, compile: str | bool = "auto", matmul_precision: str = "high"
) -> dict:
    """Set the float32 matmul precision for the process and compile ``net`` in place when chosen.

    ``nn.Module.compile`` keeps the module and its parameter names, so checkpoints are the same as eager ones.
    Returns what was applied, for the run's metrics.
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(
            f"matmul_precision={matmul_precision!r} is not one of {', '.join(MATMUL_PRECISIONS)} "
            "(high: TF32 matmuls on Ampere and newer GPUs)"
        )
    torch.set_float32_matmul_precision(matmul_precision)
    compiled = resolve_compile(compile, device)
    if compiled:
        net.compile()  # compiles lazily, at the first forward
    return {"compile": compiled, "matmul_precision": matmul_precision}


def optimizer_kwargs_for(optimizer_class: type, kwargs: dict, device: torch.device) -> dict:
    """``fused: null`` (the default) becomes True on CUDA when the optimiser has a fused kernel, and is left
    to PyTorch's default elsewhere; true or false are kept as they are."""
    kwargs = dict(kwargs)
    if "fused" not in kwargs:
        return kwargs
    fused = kwargs.pop("fused")
    if fused not in (None, True, False):
        raise ConfigError(f"optim.fused={fused!r} must be null (fused on CUDA), true or false")
    if fused is None:
        has_fused = "fused" in inspect.signature(optimizer_class).parameters
        fused = True if device.type == "cuda" and has_fused else None
    if fused is not None:
        kwargs["fused"] = fused
    return kwargs
