"""Speed switches besides the data path: precision, ``torch.compile``, TF32 matmuls and fused AdamW.

Each is a config value (see ``configs/train.yaml``, ``configs/optim/adamw.yaml`` and docs/performance.md); the
functions here turn those values into settings for the device the run is on. Every device-dependent choice is
a pure function of a :class:`DeviceSpec` (device type, CUDA compute capability, whether Triton is installed), so
that a test on a CPU machine can pass it a CUDA device's description; :func:`local_device` is the only function
that asks this machine.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from vit_cifar.errors import ConfigError

COMPILE_CHOICES = ("auto", True, False)
MATMUL_PRECISIONS = ("highest", "high", "medium")
# Lightning's precision values (short aliases such as 16 or "bf16" are refused by the config check: their
# meaning changed between Lightning versions).
PRECISIONS = (
    "auto",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
)
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed")
# Lightning's short forms, and what Lightning 2.x reads them as.
PRECISION_ALIASES = {
    "16": "16-mixed",
    "bf16": "bf16-mixed",
    "32": "32-true",
    "64": "64-true",
    16: "16-mixed",
    32: "32-true",
    64: "64-true",
}
# bf16 tensor cores arrive with Ampere (compute capability 8.0). Older GPUs (the T4 is 7.5) report
# torch.cuda.is_bf16_supported() == True because bf16 can be emulated in float32, slowly, and Inductor refuses
# to compile bf16 kernels for them.
NATIVE_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceSpec:
    """What the device-dependent choices depend on: ``type`` (``cuda``, ``cpu``, ``mps``), the CUDA compute
    capability ``(major, minor)`` (None off CUDA), and whether Triton (Inductor's GPU code generator) is
    installed."""

    type: str
    capability: tuple[int, int] | None = None
    triton: bool = False

    @classmethod
    def cuda(cls, major: int, minor: int, triton: bool = True) -> DeviceSpec:
        return cls("cuda", (major, minor), triton)


CPU = DeviceSpec("cpu")


def local_device(accelerator: str = "auto") -> DeviceSpec:
    """The device ``trainer.accelerator`` selects on this machine (its first GPU for ``gpu``/``cuda``/``auto``
    when CUDA is available), described for the functions below. The one place that queries CUDA."""
    accelerator = str(accelerator).lower()
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return DeviceSpec.cuda(major, minor, triton=importlib.util.find_spec("triton") is not None)
    if accelerator == "mps":
        return DeviceSpec("mps")
    return CPU


def resolve_precision(
    precision: str, device: DeviceSpec | str, capability: tuple[int, int] | None = None
) -> str:
    """``auto``: bf16-mixed on GPUs with native bf16 (compute capability 8.0 and newer), 16-mixed on older CUDA
    GPUs (never emulated bf16), 32-true elsewhere. Other values are returned as they are.

    ``device`` is a :class:`DeviceSpec` or a device type (then ``capability`` gives the CUDA capability)."""
    if str(precision) != "auto":
        return PRECISION_ALIASES.get(precision, str(precision))
    if isinstance(device, str):
        device = DeviceSpec(device, capability)
    if device.type != "cuda":
        return "32-true"
    if device.capability is None:
        raise ValueError("resolve_precision needs the compute capability of a CUDA device")
    return "bf16-mixed" if tuple(device.capability) >= NATIVE_BF16_CAPABILITY else "16-mixed"


def resolve_compile(value: str | bool, device: DeviceSpec | torch.device) -> bool:
    """``compile``: true, false, or auto, which compiles on CUDA (where Triton is installed) and not on CPU.

    Why by device rather than by a measurement at start-up: on CPU, compiling ViT-Tiny's training step takes
    minutes on a few cores, longer than a CPU run is meant to last; on a GPU the eager step is a long chain of
    small kernels whose launch cost compiling removes, and the compile (about a minute) is repaid within a few
    epochs. ``python -m vit_cifar.benchmark --compile`` measures both on any device.
    """
    if value not in COMPILE_CHOICES:
        raise ConfigError(f"compile={value!r} is not one of auto, true, false")
    if value == "auto":
        if isinstance(device, torch.device):
            device = local_device("cuda") if device.type == "cuda" else DeviceSpec(device.type)
        return device.type == "cuda" and device.triton
    return bool(value)


class CompileCounter:
    """Tells whether a compiled network's forward calls really ran compiled, and counts those that did not.

    Forward pre-hooks on the network's direct children read ``torch.compiler.is_compiling()``. The hooks sit on
    the children because Dynamo compiles ``nn.Module.__call__`` and the network's ``forward`` as two frames, and
    only the second, where the children run, falls back to eager execution when its recompile limit is reached.
    Inside a compiled frame the hook only sets a flag (a write, never a read, so Dynamo adds no guard and never
    recompiles for it); where Dynamo gave up on the frame and ran it eagerly, without saying so in the results,
    the hook counts the call. Nothing touches a tensor, so nothing waits for the device."""

    def __init__(self) -> None:
        self.ran_compiled = False
        self.eager = 0

    def hook(self, module: nn.Module, args) -> None:
        if torch.compiler.is_compiling():
            self.ran_compiled = True
        else:
            self.eager += 1

    def report(self) -> dict:
        """``compile`` is true only when forward calls ran compiled and none ran eagerly."""
        return {"compile": self.ran_compiled and self.eager == 0, "eager_calls": self.eager}


def apply_speed_settings(
    net: nn.Module,
    device: DeviceSpec | torch.device,
    compile: str | bool = "auto",
    matmul_precision: str = "high",
    backend: str = "inductor",
) -> dict:
    """Set the float32 matmul precision for the process and compile ``net`` in place when chosen.

    Compiling: static shapes (``dynamic=False``): the training batch has one shape (the last, shorter batch is
    dropped) and is compiled once; evaluation's shapes get graphs of their own instead of turning the training
    graph dynamic, which is what automatic dynamic shapes did after the sanity check's differently-sized batch.
    ``torch.compiler.reset()`` first, so that every run (each job of a ``-m`` sweep runs in the same process)
    starts from a clean cache and never meets the recompile limit left by the jobs before it.

    ``nn.Module.compile`` keeps the module and its parameter names, so checkpoints are the same as eager ones.
    Returns what was applied, for the run's metrics; ``"counter"`` (a :class:`CompileCounter`, when compiled)
    tells afterwards how many forward calls really ran compiled.
    """
    if matmul_precision not in MATMUL_PRECISIONS:
        raise ConfigError(
            f"matmul_precision={matmul_precision!r} is not one of {', '.join(MATMUL_PRECISIONS)} "
            "(high: TF32 matmuls on Ampere and newer GPUs)"
        )
    torch.set_float32_matmul_precision(matmul_precision)
    compiled = resolve_compile(compile, device)
    applied: dict = {"compile": compiled, "matmul_precision": matmul_precision}
    if compiled:
        torch.compiler.reset()
        counter = CompileCounter()
        for child in list(net.children()) or [net]:
            child.register_forward_pre_hook(counter.hook)
        net.compile(backend=backend, dynamic=False)  # compiles lazily, at the first forward
        applied |= {"compile_backend": backend, "counter": counter}
    return applied


def has_fused_kernel(optimizer_class: type) -> bool:
    """Whether the optimiser takes ``fused`` (a constructor taking ``**kwargs`` is given the benefit of the
    doubt: its base class decides)."""
    parameters = inspect.signature(optimizer_class).parameters
    return "fused" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def optimizer_kwargs_for(
    optimizer_class: type, kwargs: dict, device: DeviceSpec | torch.device | str
) -> dict:
    """``fused: null`` (the default) becomes True on CUDA when the optimiser has a fused kernel, and is left
    to PyTorch's default elsewhere; true or false are kept as they are.

    Why fused on CUDA: the fused AdamW kernel takes the GradScaler's ``found_inf`` on the device, so a 16-mixed
    step needs no host synchronisation, where every other AdamW implementation makes ``GradScaler.step`` read
    ``found_inf`` on the host once a step (tests/test_cuda_paths.py counts it); and it is one kernel where
    foreach is several. Clipping works with it in every precision: ``ClassifierModule.configure_gradient_clipping``
    unscales first (Lightning's own clipping refuses fused optimisers under mixed precision)."""
    kwargs = dict(kwargs)
    if "fused" not in kwargs:
        return kwargs
    fused = kwargs.pop("fused")
    if fused not in (None, True, False):
        raise ConfigError(f"optim.fused={fused!r} must be null (fused on CUDA), true or false")
    device_type = device if isinstance(device, str) else device.type
    if fused is None:
        fused = True if device_type == "cuda" and has_fused_kernel(optimizer_class) else None
    if fused is not None:
        kwargs["fused"] = fused
    return kwargs


def precision_for_trainer(precision: str, device_type: str) -> tuple[str | None, list]:
    """Lightning's ``Trainer(precision=..., plugins=...)`` for a resolved precision on ``device_type``.

    16-mixed gets the plugin Lightning builds for it on CUDA (float16 autocast and a GradScaler), built here so
    that it is the same on CPU, where Lightning would silently train in bf16-mixed instead."""
    if precision == "16-mixed":
        from lightning.pytorch.plugins.precision import MixedPrecision

        return None, [MixedPrecision("16-mixed", device="cuda" if device_type == "cuda" else "cpu")]
    return precision, []
