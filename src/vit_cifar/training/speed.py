"""Speed switches applied to a training run: ``torch.compile``, TF32 matmuls and Lightning's precision plugin
(docs/performance.md); what each value means on which device is decided in :mod:`vit_cifar.devices`."""

from __future__ import annotations

import torch
from torch import nn

from vit_cifar.devices import DeviceSpec, resolve_compile


class CompileCounter:
    """Whether a compiled network's training forward calls really ran compiled, and how many did not.

    Forward pre-hooks on the network's children read ``torch.compiler.is_compiling()``: on the children because
    only the ``forward`` frame, where they run, falls back to eager silently at the recompile limit. Inside a
    compiled frame the hook only writes a flag (no read, so Dynamo adds no guard); no tensor is touched."""

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
        return {"compile": self.ran_compiled and self.eager == 0, "eager_calls": self.eager}


def apply_speed_settings(
    net: nn.Module,
    device: DeviceSpec | torch.device,
    compile: str | bool = "auto",
    matmul_precision: str = "high",
    backend: str = "inductor",
) -> dict:
    """Set the float32 matmul precision and compile ``net`` in place when chosen; returns what was applied, for
    the metrics, with a :class:`CompileCounter` as ``"counter"`` when compiled.

    Static shapes: the training batch has one shape (the last, shorter batch is dropped). ``reset()`` first, so
    each job of a ``-m`` sweep (one process) starts clear of the recompile limit the jobs before it left.
    ``nn.Module.compile`` keeps the parameter names, so checkpoints are the same as eager ones."""
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
    """Lightning's ``Trainer(precision=..., plugins=...)`` for a resolved precision: 16-mixed gets the plugin
    Lightning builds for CUDA (float16 and a GradScaler) on CPU too, where Lightning would train in bf16-mixed."""
    if precision == "16-mixed":
        from lightning.pytorch.plugins.precision import MixedPrecision

        return None, [MixedPrecision("16-mixed", device="cuda" if device_type == "cuda" else "cpu")]
    return precision, []
