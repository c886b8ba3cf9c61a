"""What the device-dependent config values (precision, compile, fused optimisers) mean on a device: pure
functions of a :class:`DeviceSpec`, so that a test on a CPU machine can pass them a CUDA device's description."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import inspect
import os
import platform
import subprocess
import sys
from dataclasses import dataclass

import torch

from vit_cifar.errors import Choice

COMPILE = Choice(("auto", True, False))  # compile=auto compiles where it pays: see resolve_compile
DEVICE_AUG = Choice(("auto", True, False), hint="auto: on CUDA where the aug recipe has a batched version")
MATMUL_PRECISIONS = ("highest", "high", "medium")
# Lightning's precision values (not transformer-engine: it needs NVIDIA's package, which this project does not install)
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
# Lightning's short forms, and what Lightning 2.x reads them as.
PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}
PRECISION_ALIASES |= {int(k): v for k, v in PRECISION_ALIASES.items() if k.isdigit()}
# bf16 tensor cores arrive with Ampere (compute capability 8.0). Older GPUs (the T4 is 7.5) report
# torch.cuda.is_bf16_supported() == True because bf16 can be emulated in float32, slowly, and Inductor refuses
# to compile bf16 kernels for them.
NATIVE_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceSpec:
    """What the device-dependent choices depend on; ``capability`` is CUDA's (major, minor), None off CUDA,
    ``triton`` whether Inductor's GPU code generator is installed, ``memory`` a GPU's bytes (None: unknown)."""

    type: str
    capability: tuple[int, int] | None = None
    triton: bool = False
    memory: int | None = None

    @classmethod
    def cuda(cls, major: int, minor: int, triton: bool = True, memory: int | None = None) -> DeviceSpec:
        return cls("cuda", (major, minor), triton, memory)


CPU = DeviceSpec("cpu")


def local_device(accelerator: str = "auto") -> DeviceSpec:
    """The device ``trainer.accelerator`` selects on this machine (its first GPU for gpu, cuda or auto), described
    without initialising CUDA: the one place that asks this machine."""
    accelerator = str(accelerator).lower()
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():  # NVML's count under Lightning
        _, (major, minor), memory = cuda_description()
        return DeviceSpec.cuda(major, minor, importlib.util.find_spec("triton") is not None, memory)
    return DeviceSpec("mps") if accelerator == "mps" else CPU


def cuda_description(index: int = 0) -> tuple[str, tuple[int, int], int]:
    """The name, compute capability and memory (bytes) of visible CUDA device ``index``, without initialising CUDA
    here: Lightning's ``ddp_notebook`` forks one process per GPU from the notebook's kernel and refuses to once CUDA
    is initialised in it, which ``torch.cuda.get_device_properties`` does. So, until CUDA runs, the driver's
    management library (NVML, which torch and Lightning use to count GPUs without starting CUDA) answers, and
    where it cannot be loaded (a container without the driver's utilities), a child process asks torch."""
    if torch.cuda.is_initialized():
        props = torch.cuda.get_device_properties(index)
        return props.name, (props.major, props.minor), props.total_memory
    try:
        return _nvml_description(index)
    except OSError:
        return _child_process_description(index)


@functools.cache  # a child importing torch takes seconds; the answer does not change
def _child_process_description(index: int) -> tuple[str, tuple[int, int], int]:
    ask = f"import torch; p = torch.cuda.get_device_properties({index}); "
    ask += "print(p.major, p.minor, p.total_memory, p.name)"
    out = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, check=True)
    major, minor, memory, name = out.stdout.strip().split(" ", 3)
    return name, (int(major), int(minor)), int(memory)


def _nvml_description(index: int) -> tuple[str, tuple[int, int], int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if index < len(visible) and visible[index].strip().isdigit():  # NVML numbers every GPU, visible or not
        index = int(visible[index])
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    try:  # each call returns 0 or an error code (NVML's shutdown, uninitialised, returns one too: harmless)
        handle, name = ctypes.c_void_p(), ctypes.create_string_buffer(96)
        major, minor = ctypes.c_int(), ctypes.c_int()
        memory = (ctypes.c_ulonglong * 3)()  # nvmlMemory_t: total, free, used
        failed = (
            nvml.nvmlInit_v2()
            or nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
            or nvml.nvmlDeviceGetName(handle, name, len(name))
            or nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor))
            or nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
        )
        if failed:
            raise OSError(f"NVML could not describe GPU {index} (error {failed})")
        return name.value.decode(), (major.value, minor.value), int(memory[0])
    finally:
        nvml.nvmlShutdown()


def _cpuinfo(key: str) -> list[str]:
    """The values of ``key`` in Linux's /proc/cpuinfo, for the first CPU (none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return [line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key][:1]
    except OSError:
        return []


def cpu_model() -> str:
    return next(iter(_cpuinfo("model name")), platform.processor()) or "unknown model"


def cpu_bf16() -> str:
    """How this CPU multiplies bfloat16: natively with ``AMX`` or ``AVX512-BF16`` (x86) or ``BF16`` (Arm), else
    ``emulated`` in float32 instructions (slower than float32 itself); ``unknown`` without /proc/cpuinfo."""
    flags = " ".join(_cpuinfo("flags") + _cpuinfo("Features")).split()
    if not flags:
        return "unknown"
    native = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "BF16"}
    return next((name for flag, name in native.items() if flag in flags), "emulated")


def cpu_precision() -> str:
    """The faster precision for training on this CPU, as ``${cpu_precision:}`` in a config: bf16-mixed where it
    multiplies bf16 natively, else 32-true (emulated bf16 is slower than float32; docs/recipes.md)."""
    return "32-true" if cpu_bf16() in ("emulated", "unknown") else "bf16-mixed"


def resolve_precision(precision: str, device: DeviceSpec) -> str:
    """``auto``: bf16-mixed where bf16 is native (never emulated), 16-mixed on older CUDA GPUs, else 32-true."""
    if str(precision) != "auto":
        return canonical_precision(precision)
    if device.type == "cuda":
        return "bf16-mixed" if tuple(device.capability) >= NATIVE_BF16_CAPABILITY else "16-mixed"
    return "32-true"


def resolve_compile(value: str | bool, device: DeviceSpec) -> bool:
    """``compile=auto`` compiles on CUDA GPUs of compute capability 8.0 and newer (where Triton is installed).

    Why by device rather than by a measurement at start-up: on CPU, compiling ViT-Tiny's training step takes
    minutes on a few cores, longer than a CPU run is meant to last; on a GPU the eager step is a long chain of
    small kernels whose launch cost compiling removes, and the compile (about a minute) is repaid within a few
    epochs. ``python -m vit_cifar.benchmark --compile`` measures both on any device. Below 8.0, auto takes the
    path known to work: float16 Inductor there has never been run (docs/performance.md); ``compile=true`` asks.
    """
    auto = device.type == "cuda" and device.triton and tuple(device.capability) >= NATIVE_BF16_CAPABILITY
    return auto if value == "auto" else bool(value)


def resolve_device_aug(value: str | bool, device: DeviceSpec, batched: bool) -> bool:
    """``data.device_aug``: auto augments the training batches on the device (the GPU data path) on CUDA,
    where the recipe has a batched version (``batched``), and in DataLoader workers elsewhere.

    Why on CUDA: one quiet CPU core runs the seed's per-image augmentation at about 4,000 images/s, a loaded
    one far less (docs/performance.md, ``python -m vit_cifar.benchmark --loader``); a T4 trains the seed at
    about 1,900 images/s, which Colab's single worker, sharing its core with the training process, meets with no
    headroom, and a compiled H100 step wants over 20,000, six or more cores given to the workers alone."""
    return (device.type == "cuda" and batched) if value == "auto" else bool(value)


AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
# What the layers compute in: autocast's dtype under the mixed precisions, the weights' own under the -true ones.
COMPUTE_DTYPES = AUTOCAST_DTYPES | {"16-true": torch.float16, "bf16-true": torch.bfloat16}
COMPUTE_DTYPES["64-true"] = torch.float64


def canonical_precision(precision: str | int) -> str:
    """Lightning's full name for a precision value (``16`` -> ``16-mixed``, ``"bf16"`` -> ``bf16-mixed``)."""
    return PRECISION_ALIASES.get(precision, str(precision))


def autocast_dtype(precision: str | int) -> torch.dtype | None:
    """The dtype autocast computes in, or None where there is none (the -true precisions convert the weights)."""
    return AUTOCAST_DTYPES.get(canonical_precision(precision))


def compute_dtype(precision: str | int) -> torch.dtype:
    return COMPUTE_DTYPES.get(canonical_precision(precision), torch.float32)


def has_fused_kernel(optimizer_class: type) -> bool:
    """Whether the optimiser takes ``fused`` (one taking ``**kwargs`` is given the benefit of the doubt)."""
    parameters = inspect.signature(optimizer_class).parameters
    return "fused" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
