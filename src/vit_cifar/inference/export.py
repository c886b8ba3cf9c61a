"""Take a trained model out of the project: ``python -m vit_cifar.export ckpt_path=<file> format=<format>``, as
``onnx`` (the model card in its metadata), ``safetensors`` (the card in ``<name>.json``) or ``timm`` (a folder timm
loads: :mod:`vit_cifar.inference.interop`). Each export is loaded back by the other side and checked against
PyTorch (docs/deploy.md) before a file is written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import build_with_weights, load_classifier, required_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.errors import (
    POSITIVE_INT,
    Choice,
    ConfigError,
    DataError,
    Number,
    VitCifarError,
    check,
    first_line,
)
from vit_cifar.inference.engine import InputSpec, evaluation_datamodule, input_spec, predict_probs
from vit_cifar.inference.interop import timm_config, timm_model_args, timm_network
from vit_cifar.inference.runtime import ONNX_METADATA_KEY, OnnxNet, model_card, onnx_session, require

# What each format writes beside ``<name>.ckpt`` when not told: ``<name>.onnx``, ``<name>.safetensors`` (and
# ``<name>.json``), the folder ``<name>-timm/``.
ENDINGS = {"onnx": ".onnx", "safetensors": ".safetensors", "timm": "-timm"}


def onnx_model(net: torch.nn.Module, card: dict, opset: int):
    """The network as an ONNX ``ModelProto`` with a dynamic batch axis and the model card in its metadata."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnxscript")  # torch.onnx's exporter is written with it
    net = copy.deepcopy(net).float().eval()
    size = int(card["image_size"])
    try:
        program = torch.onnx.export(
            net,
            (torch.randn(2, 3, size, size),),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            opset_version=int(opset),
            verbose=False,
        )
    except Exception as err:  # torch.export / onnxscript: name the network and the exporter's own first line
        raise VitCifarError(
            f"torch.onnx.export failed for this {type(net).__name__}: {first_line(err)[:300]}"
        ) from err
    model = program.model_proto
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(card)})
    model.doc_string = f"vit-cifar {type(net).__name__}: {card['input']} -> {card['output']}"
    return model


def load_back(fmt: str, card: dict, weights) -> torch.nn.Module:
    """The export as the other side loads it (onnxruntime, safetensors, timm), from the very bytes then written:
    ``weights`` is the ONNX ``ModelProto`` or the safetensors bytes."""
    if fmt == "onnx":
        return OnnxNet(onnx_session(weights.SerializeToString()))
    state = require("safetensors.torch", "safetensors").load(weights)
    if fmt == "timm":
        return timm_network(timm_model_args(card["network"]), state)
    return build_with_weights(card["network"], state, "the safetensors export")


def write_files(fmt: str, staged: Path, card: dict, weights) -> None:
    """The checked export into ``staged``, its card last: in the ONNX metadata, ``<name>.json`` beside the
    safetensors file, or timm's ``config.json`` beside ``model.safetensors``."""
    if fmt == "onnx":
        require("onnx", "onnx").helper.set_model_props(weights, {ONNX_METADATA_KEY: json.dumps(card)})
        write_atomic(staged, weights.SerializeToString())
    elif fmt == "safetensors":
        write_atomic(staged, weights)
        write_atomic(staged.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    else:  # a folder; write_atomic makes it
        write_atomic(staged / "model.safetensors", weights)
        write_atomic(staged / "config.json", json.dumps(timm_config(card), indent=2) + "\n")


def check_images(data_cfg: dict | None, spec: InputSpec, count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` test images of the data ``data_cfg`` describes, normalised as the network expects;
    random images (and a note saying so) when that data cannot be read."""
    note = "no data configured"
    if data_cfg:
        try:
            datamodule = evaluation_datamodule(data_cfg, spec, batch_size=count)
            datamodule.setup("test")
            images = next(iter(datamodule.test_dataloader()))[0][:count]
            return images, f"{len(images)} test images of {datamodule.description}"
        except (DataError, InstantiationException) as err:
            # Hydra's instantiate wraps what the DataModule's constructor raised
            cause = err.__cause__ if isinstance(err, InstantiationException) else err
            if not isinstance(cause, DataError):
                raise
            note = f"no test images ({first_line(cause)[:160]})"
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, spec.image_size, spec.image_size, generator=generator)
    return images, f"{count} random images: {note}; pass data.root=<dataset> to check on real ones"


def compare(reference: torch.nn.Module, exported: torch.nn.Module, images: torch.Tensor) -> dict:
    """Largest difference of a class probability and the share of equal top-1 classes, image by image."""
    ours, _ = predict_probs(reference, images.split(64), torch.device("cpu"))
    theirs, _ = predict_probs(exported, images.split(64), torch.device("cpu"))
    return {
        "max_abs_diff_probs": float((ours - theirs).abs().max()),
        "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).float().mean()),
    }


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str,
    output: str | Path | None = None,
    data_cfg: dict | None = None,
    images: int = 256,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> dict:
    """Export ``ckpt_path`` as ``fmt``, check it against PyTorch, then write it; returns the model card."""
    check("format", fmt, Choice(tuple(ENDINGS)))
    check("check_images", images, POSITIVE_INT)
    check("tolerance", tolerance, Number(low=0, low_open=True))
    check("opset", opset, Number(low=7, integer=True, hint="18: the default"))
    ckpt_path = Path(ckpt_path)
    output = Path(output or ckpt_path.with_name(ckpt_path.stem + ENDINGS[fmt]))
    if fmt != "timm" and output.suffix.lower() != ENDINGS[fmt]:
        raise ConfigError(f"output={output} must end in {ENDINGS[fmt]} for format={fmt}")
    check_output_place(output, "output", folder=fmt == "timm")
    loaded = load_classifier(ckpt_path)
    card = model_card(loaded)
    if fmt == "timm":  # refuse what timm cannot hold, or a missing timm, before any work
        timm_model_args(loaded.net_config)
        require("timm", "timm", extra="bench")
    x, source = check_images(data_cfg, input_spec(loaded), int(images))

    if fmt == "onnx":
        weights = onnx_model(loaded.net, card, opset)
    else:  # timm's names are ours
        state = {k: v.detach().contiguous() for k, v in loaded.net.state_dict().items()}
        weights = require("safetensors.torch", "safetensors").save(state, metadata={"format": "pt"})
    measured = compare(loaded.net, load_back(fmt, card, weights), x)
    card["check"] = measured | {"images": source, "tolerance": float(tolerance)}
    if not measured["max_abs_diff_probs"] <= tolerance:
        raise VitCifarError(
            f"the {fmt} export differs from PyTorch by {measured['max_abs_diff_probs']:.2e} in a probability "
            f"(tolerance {tolerance:g}) on {source}: nothing was written"
        )
    # Staged in a scratch folder beside output, then renamed into place: the card (.json) last.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
        write_files(fmt, Path(scratch) / output.name, card, weights)
        if output.is_dir():  # an earlier timm export
            shutil.rmtree(output)
        for done in sorted(Path(scratch).iterdir(), key=lambda p: p.suffix == ".json"):
            os.replace(done, output.parent / done.name)
    files = [output, output.with_suffix(".json")] if fmt == "safetensors" else [output]
    print(
        f"wrote {' and '.join(str(f) for f in files)} | {type(loaded.net).__name__}, {card['params']:,} params | "
        f"checked on {source}: max |p - p_torch| = {measured['max_abs_diff_probs']:.2e}, "
        f"top-1 agreement {100 * measured['top1_agreement']:.1f}%"
    )
    return card


def export(cfg: DictConfig) -> dict:
    """The ``python -m vit_cifar.export`` job (``configs/export.yaml``)."""
    return export_checkpoint(
        required_ckpt_path(cfg),
        cfg.format,
        output=cfg.get("output"),
        data_cfg=OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None,
        images=cfg.check_images,
        tolerance=cfg.tolerance,
        opset=cfg.opset,
    )
