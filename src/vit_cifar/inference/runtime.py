"""Loading a trained network for inference from what ``python -m vit_cifar.export`` writes, or from a training
checkpoint: ``runtime=torch`` (a ``.ckpt``, or ``.safetensors`` with its ``.json``) or ``runtime=onnx`` (an
``.onnx`` file, run by onnxruntime on the CPU).

Every export carries the same *model card* (:func:`model_card`): the network's constructor arguments, the class
names and the input's size and normalisation; the ``.json`` beside a ``.safetensors`` file holds it, and an
``.onnx`` file holds it in its metadata (key ``vit_cifar``). No Lightning checkpoint is needed to load either.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vit_cifar.checkpoints.loading import LoadedClassifier, build_with_weights, load_classifier
from vit_cifar.devices import canonical_precision
from vit_cifar.errors import CheckpointError, Choice, ConfigError, check, first_line
from vit_cifar.inference.engine import inference_dtype, input_spec, resolve_device, set_threads

ONNX_METADATA_KEY = "vit_cifar"


def require(module: str, package: str, extra: str = "deploy"):
    """Import an optional dependency, or stop with one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{package} is not installed: pip install -e '.[{extra}]'") from None


def model_card(loaded: LoadedClassifier) -> dict:
    """What a program needs beside the weights to use them: how to build the network, what its input must
    look like and what its outputs mean."""
    size, mean, std = input_spec(loaded)
    return {
        "vit_cifar_export": 1,  # the card's version
        "network": loaded.net_config,  # _target_ and arguments: vit_cifar.models.registry.build_network rebuilds it
        "classes": list(loaded.classes),
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
        "input": f"float32 (batch, 3, {size}, {size}): RGB scaled to [0, 1], then per channel (x - mean) / std",
        "output": "logits (batch, classes); their softmax is the class probabilities",
        "params": sum(p.numel() for p in loaded.net.parameters()),
        "source": {"checkpoint": loaded.path.name if loaded.path else None, "after_epoch": loaded.epoch},
    }


def _classifier(card: str | bytes, where: str, path: Path, build) -> LoadedClassifier:
    """The classifier a model card (JSON) describes, its network made by ``build(card)``."""
    try:
        card = json.loads(card)
    except ValueError:  # not JSON, or not UTF-8
        card = None
    needed = ("network", "classes", "image_size", "mean", "std")
    if not isinstance(card, dict) or any(k not in card for k in needed):
        raise CheckpointError(
            f"{where} is not a vit-cifar model card (it needs {', '.join(needed)}): "
            "export the model again with python -m vit_cifar.export"
        )
    return LoadedClassifier(
        net=build(card),
        classes=list(card["classes"]),
        net_config=dict(card["network"]),
        # input_spec() reads the image size and normalisation from here, as from a training run's config
        run_config={"data": {"image_size": card["image_size"], "mean": card["mean"], "std": card["std"]}},
        path=path,
        epoch=(card.get("source") or {}).get("after_epoch"),
    )


def load_safetensors(path: str | Path) -> LoadedClassifier:
    """Rebuild the network from ``<name>.json`` and load ``<name>.safetensors`` into it (no code runs: the
    network must be one of ours, and safetensors holds tensors only)."""
    safetensors_torch = require("safetensors.torch", "safetensors")
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise CheckpointError(
            f"{path} needs {meta.name} beside it (the network's arguments, classes and normalisation): "
            "export with python -m vit_cifar.export format=safetensors"
        )
    try:
        text = meta.read_bytes()
        state = safetensors_torch.load_file(str(path))
    # An OSError, or safetensors' own SafetensorError for a truncated or foreign file
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as safetensors ({first_line(err)[:200]})") from err
    where = f"{path} (with {meta.name})"
    return _classifier(text, str(meta), path, lambda card: build_with_weights(card["network"], state, where))


def onnx_session(model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an ONNX model (a file or its bytes), every graph optimisation on, with
    ``threads`` intra-op threads (default: as many as torch uses)."""
    ort = require("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxNet(nn.Module):
    """An onnxruntime session behind the ``nn.Module`` interface the inference loop uses: float32 image
    batches in (on the CPU: :func:`check_runtime_options`), logits out, as torch tensors."""

    def __init__(self, session, num_params: int = 0) -> None:
        super().__init__()
        self.session = session
        self.num_params = num_params  # from the model card: the graph's weights are no torch parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().float().numpy())
        (logits,) = self.session.run(None, {self.session.get_inputs()[0].name: array})
        return torch.from_numpy(logits)


def load_onnx(path: str | Path, threads: int | None = None) -> LoadedClassifier:
    """An ``.onnx`` file written by ``python -m vit_cifar.export`` as a classifier run by onnxruntime (the
    model card read from its metadata, as any onnxruntime user reads it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: export one with python -m vit_cifar.export format=onnx"
        )
    require("onnxruntime", "onnxruntime")  # here, not in the try: a missing package is no damaged file
    try:
        session = onnx_session(path, threads)
    except Exception as err:  # onnxruntime's Fail/InvalidGraph/InvalidProtobuf: a damaged or foreign file
        raise CheckpointError(f"{path} cannot be loaded as an ONNX model ({first_line(err)[:200]})") from err
    card = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    if card is None:
        raise CheckpointError(
            f"{path} has no vit-cifar metadata (classes, normalisation): export it with "
            "python -m vit_cifar.export format=onnx"
        )
    return _classifier(card, f"the metadata of {path}", path, lambda c: OnnxNet(session, c.get("params", 0)))


def load_for_inference(
    path: str | Path, runtime: str = "torch", threads: int | None = None
) -> LoadedClassifier:
    """The classifier ``path`` holds, to be run by ``runtime``: ``torch`` for a training checkpoint (``.ckpt``)
    or an exported ``.safetensors``; ``onnx`` for an exported ``.onnx``."""
    check("runtime", runtime, Choice(("torch", "onnx")))
    suffix = Path(path).suffix.lower()
    if runtime == "onnx":
        if suffix != ".onnx":
            raise ConfigError(
                f"runtime=onnx runs an .onnx file, and {path} is not one: export it first with "
                f"python -m vit_cifar.export ckpt_path={path} format=onnx"
            )
        return load_onnx(path, threads)
    if suffix == ".onnx":
        raise ConfigError(f"{path} is an ONNX model: add runtime=onnx to run it with onnxruntime")
    return load_safetensors(path) if suffix == ".safetensors" else load_classifier(path)


def open_for_inference(
    path: str | Path, runtime: str, device: str, threads: int | None, precision: str | int = "32"
) -> tuple[LoadedClassifier, torch.device, torch.dtype | None]:
    """Evaluation's and prediction's setup (after :func:`check_runtime_options`): classifier, device, dtype."""
    dtype = inference_dtype(precision)
    set_threads(threads)
    torch_device = resolve_device(device)
    return load_for_inference(path, runtime, threads), torch_device, dtype


def count_params(loaded: LoadedClassifier) -> int:
    """Parameters of the network, also when onnxruntime runs it (from its model card)."""
    if isinstance(loaded.net, OnnxNet):
        return int(loaded.net.num_params)
    return sum(p.numel() for p in loaded.net.parameters())


def check_runtime_options(runtime: str, device: str, precision: str | int = "32") -> None:
    """onnxruntime runs float32 on the CPU here: other devices and precisions are for ``runtime=torch``."""
    if str(runtime) == "onnx" and str(device).lower() != "cpu":
        raise ConfigError(f"runtime=onnx runs on the CPU, not device={device}: use device=cpu")
    if str(runtime) == "onnx" and canonical_precision(precision) != "32-true":
        raise ConfigError(f"runtime=onnx runs float32: use precision=32, not precision={precision}")
