"""Running a trained classifier over batches of images: the one loop behind evaluation, prediction and the
benchmark, and what the network's input must look like (taken from its checkpoint)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import NamedTuple

import hydra
import torch
from torch import nn

from vit_cifar.checkpoints.loading import LoadedClassifier
from vit_cifar.config.schema import TTA
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from vit_cifar.devices import autocast_dtype, canonical_precision, cpu_bf16, cpu_model, cuda_description
from vit_cifar.errors import ConfigError, Number, check


class InputSpec(NamedTuple):
    """Image side and normalisation the network was trained with: part of the model, not of the data."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(loaded: LoadedClassifier) -> InputSpec:
    data = loaded.run_config.get("data") or {}
    size = loaded.net_config.get("img_size") or data.get("image_size") or 32
    return InputSpec(
        int(size), tuple(data.get("mean") or CIFAR10_MEAN), tuple(data.get("std") or CIFAR10_STD)
    )


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``/``gpu``, ``cuda:N`` or ``auto`` (a GPU when there is one)."""
    name = str(name).lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda" if name == "gpu" else name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name} is unknown: use cpu, cuda, cuda:<index> or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but no CUDA GPU is available: use device=cpu")
    return device


def describe_device(device: torch.device) -> str:
    """What ran it, for reports: the GPU's name, or the CPU's model, its bf16 support and the threads torch uses."""
    if device.type == "cuda":
        return f"cuda ({cuda_description(device.index or 0)[0]})"
    return f"cpu ({cpu_model()}, bf16 {cpu_bf16()}, {torch.get_num_threads()} threads)"


def set_threads(threads: int | None) -> None:
    """Intra-op CPU threads; None keeps torch's default (one per core)."""
    check("threads", threads, Number(low=1, integer=True, optional=True, hint="null: one per core"))
    if threads is not None:
        torch.set_num_threads(int(threads))


def inference_dtype(precision: str | int) -> torch.dtype | None:
    """``32`` (or ``32-true``): exact float32, no autocast; ``bf16`` (``bf16-mixed``): autocast to bfloat16
    (about 2x on CPUs with AVX512-BF16 or AMX, slower on CPUs without; predictions may differ from float32 on
    borderline images). Other precisions are for training."""
    dtype = autocast_dtype(precision)
    if dtype is not torch.bfloat16 and canonical_precision(precision) != "32-true":
        raise ConfigError(f"precision={precision} is not supported here: use 32 (exact) or bf16")
    return dtype


# Test-time augmentation: the views whose softmax is averaged. flip: image and mirror. flip_shift: both, each
# also moved 2 pixels diagonally either way (reflect padding, as training's random crop pads): 6 views, +0.7 and
# +0.9 validation points over flip on two ~30-epoch proxies (docs/recipes.md).
TTA_SHIFT = 2


def tta_mode(tta: bool | str) -> str:
    """The name of a ``tta`` setting (checked): none (``false`` too), flip (``true`` too) or flip_shift."""
    check("tta", tta, TTA)
    return {False: "none", True: "flip"}.get(tta, tta)


def tta_views(x: torch.Tensor, tta: bool | str) -> list[torch.Tensor]:
    """The batch ``x`` (N, C, H, W) as test-time augmentation ``tta`` sees it: one batch per view."""
    mode = tta_mode(tta)
    views = [x] if mode == "none" else [x, x.flip(-1)]
    if mode == "flip_shift":
        s, (h, w) = TTA_SHIFT, x.shape[-2:]
        padded = [nn.functional.pad(v, (s, s, s, s), mode="reflect") for v in views]
        views += [p[..., o : o + h, o : o + w] for p in padded for o in (0, 2 * s)]
    return views


def class_probs(net: nn.Module, x: torch.Tensor, tta: bool | str = False) -> torch.Tensor:
    """Softmax probabilities in float32, averaged over the views of test-time augmentation ``tta``."""
    views = tta_views(x, tta)
    return sum(net(v).float().softmax(dim=-1) for v in views) / len(views)


@torch.inference_mode()
def predict_probs(
    net: nn.Module,
    batches: Iterable,
    device: torch.device,
    tta: bool | str = False,
    dtype: torch.dtype | None = None,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities (N, C) on the CPU for every batch, and the labels when batches are (images, labels).

    ``tta``: average the softmax over test-time augmentation's views (:func:`tta_views`; the seed trained with
    flips off, but mirrored CIFAR images are still natural images). ``dtype``: autocast to it (None: float32).
    ``pad_to``: pad a short last batch with zeros to this size, so that a network compiled for one shape never
    recompiles (the padding's outputs are dropped; the benchmark uses it).
    """
    net = net.eval().to(device)
    probs, labels = [], []
    for batch in batches:
        x, y = batch if isinstance(batch, list | tuple) else (batch, None)
        x = x.to(device, non_blocking=True)
        n = len(x)
        if pad_to and n < pad_to:
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            p = class_probs(net, x, tta)
        probs.append(p[:n].cpu())
        if y is not None:
            labels.append(y)
    if not probs:
        raise ConfigError("there are no images to run the network on")
    return torch.cat(probs), (torch.cat(labels) if labels else None)


def evaluation_datamodule(data_cfg: dict, spec: InputSpec, batch_size: int, num_workers: int = 0):
    """The DataModule ``data_cfg`` configures, for the test split only, fed as the network expects (its image
    size and normalisation)."""
    cfg = data_cfg | {
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "eval_batch_size": int(batch_size),
        "num_workers": int(num_workers),
        "persistent_workers": False,
        "val_size": 0,
        "train_subset": None,
        "device_aug": False,  # training batches only (auto is resolved for training runs)
    }
    return hydra.utils.instantiate(cfg, _convert_="all")
