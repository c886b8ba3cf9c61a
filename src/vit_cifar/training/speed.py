"""Speed switches applied to a training run: ``torch.compile``, TF32 matmuls and Lightning's precision plugin
(fused AdamW is chosen where the optimiser is built, ``training.module.build_optimization``).

Each is a config value (see ``configs/train.yaml``, ``configs/optim/adamw.yaml`` and docs/performance.md);
what each value means on which device is decided in :mod:`vit_cifar.devices`, and applied here.
"""

from __future__ import annotations

import torch
from torch import nn

from vit_cifar.devices import DeviceSpec, resolve_compile


class CompileCounter:
    """Tells whether a compiled network's training forward calls really ran compiled, and counts those that did
    not (evaluation runs eagerly by design).

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
        if not module.training:
            return
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
    dropped) and is compiled once, never turned dynamic; evaluation runs eagerly (``ClassifierModule._step``).
    ``torch.compiler.reset()`` first, so that every run (each job of a ``-m`` sweep runs in the same process)
    starts from a clean cache and never meets the recompile limit left by the jobs before it.

    ``nn.Module.compile`` keeps the module and its parameter names, so checkpoints are the same as eager ones.
    Returns what was applied, for the run's metrics; ``"counter"`` (a :class:`CompileCounter`, when compiled)
    tells afterwards how many forward calls really ran compiled.
    """
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


def precision_for_trainer(precision: str, device_type: str) -> tuple[str | None, list]:
    """Lightning's ``Trainer(precision=..., plugins=...)`` for a resolved precision on ``device_type``.

    16-mixed gets the plugin Lightning builds for it on CUDA (float16 autocast and a GradScaler), built here so
    that it is the same on CPU, where Lightning would silently train in bf16-mixed instead."""
    if precision == "16-mixed":
        from lightning.pytorch.plugins.precision import MixedPrecision

        return None, [MixedPrecision("16-mixed", device="cuda" if device_type == "cuda" else "cpu")]
    return precision, []
