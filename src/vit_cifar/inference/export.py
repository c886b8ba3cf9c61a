"""Take a trained model out of the project: ``python -m vit_cifar.export ckpt_path=<file> format=<format>``.

Formats (``configs/export.yaml``):

* ``onnx``: one ``.onnx`` file, input ``images`` (batch, 3, H, W) normalised float32 with a dynamic batch axis,
  output ``logits``; the model card (classes, normalisation, network arguments) sits in its metadata.
* ``safetensors``: the weights, plus ``<name>.json`` (the model card): ``vit_cifar.inference.runtime.load_safetensors``
  rebuilds the network from them, no Lightning checkpoint needed.
* ``timm``: a folder holding ``model.safetensors`` and ``config.json`` for timm: ``timm.create_model(
  config["architecture"], num_classes=config["num_classes"], **{**config["model_args"], **exact_norm_args()})``
  loads the state dict exactly (our ViT with ``tokenizer=patch`` only; see :mod:`vit_cifar.inference.interop`).

Each export is loaded back by the other side (onnxruntime, safetensors, timm) and run on ``check_images``
test images of ``data`` beside the PyTorch network before it is written: the largest difference of a class
probability must stay under ``tolerance``, else nothing is written. The check's numbers are printed and saved
in the model card (``check``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import LoadedClassifier, load_classifier, required_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.errors import POSITIVE_INT, Choice, ConfigError, DataError, Number, VitCifarError, first_line
from vit_cifar.errors import check as check_value
from vit_cifar.inference.engine import InputSpec, evaluation_datamodule, input_spec, predict_probs
from vit_cifar.inference.interop import (
    LAYER_NORM_EPS,
    TIMM_ARCH,
    build_timm_vit,
    exact_norm_args,
    timm_model_args,
    timm_state_dict,
)
from vit_cifar.inference.runtime import (
    ONNX_METADATA_KEY,
    OnnxNet,
    card_path,
    load_safetensors,
    model_card,
    onnx_session,
    require,
)

FORMATS = ("onnx", "safetensors", "timm")
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"


def default_output(ckpt_path: Path, fmt: str) -> Path:
    """Beside the checkpoint: ``<name>.onnx``, ``<name>.safetensors`` (and ``<name>.json``), ``<name>-timm/``."""
    stem = ckpt_path.with_suffix("")
    return {"onnx": stem.with_suffix(".onnx"), "safetensors": stem.with_suffix(".safetensors")}.get(
        fmt, stem.with_name(stem.name + "-timm")
    )


def check_output(output: Path, fmt: str) -> None:
    wanted = {"onnx": ".onnx", "safetensors": ".safetensors"}.get(fmt)
    if wanted and output.suffix.lower() != wanted:
        raise ConfigError(f"output={output} must end in {wanted} for format={fmt}")
    if fmt == "timm" and output.exists() and not output.is_dir():
        raise ConfigError(
            f"output={output} is a file: format=timm writes a folder (model.safetensors, config.json)"
        )
    check_output_place(output, "output", folder=fmt == "timm")


# ------------------------------------------------------------------------------------------ the formats


def onnx_model(net: torch.nn.Module, card: dict, opset: int):
    """The network as an ONNX ``ModelProto`` with a dynamic batch axis and the model card in its metadata."""
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnxscript")  # torch.onnx's exporter is written with it
    net = copy.deepcopy(net).float().eval()
    size = int(card["image_size"])
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: batch},),
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


def timm_config(loaded: LoadedClassifier, card: dict) -> dict:
    """timm's ``config.json`` (as timm's own Hub exports write it): architecture, model_args, pretrained_cfg."""
    args = timm_model_args(loaded.net_config)
    size = card["image_size"]
    return {
        "architecture": TIMM_ARCH,
        "num_classes": args.pop("num_classes"),
        "num_features": args["embed_dim"],
        "global_pool": "token",
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": card["mean"],
            "std": card["std"],
            "num_classes": len(card["classes"]),
            "classifier": "head",
            "crop_pct": 1.0,
            "interpolation": "bilinear",
        },
        "label_names": card["classes"],
        "vit_cifar": {
            "note": (
                f"our LayerNorms use eps={LAYER_NORM_EPS} (timm's default: 1e-6), which JSON cannot state: pass "
                f"norm_layer=embed_norm_layer=functools.partial(torch.nn.LayerNorm, eps={LAYER_NORM_EPS}) to "
                "timm.create_model too for the very same outputs (without, probabilities differ by up to ~1e-4)"
            ),
            **card,
        },
    }


def write_export(loaded: LoadedClassifier, fmt: str, staged: Path, card: dict, opset: int):
    """Write ``fmt`` to ``staged`` (a scratch path); return what :func:`load_back` needs."""
    if fmt == "onnx":
        model = onnx_model(loaded.net, card, opset)
        write_atomic(staged, model.SerializeToString())
        return model
    safetensors_torch = require("safetensors.torch", "safetensors")
    if fmt == "safetensors":
        state = {k: v.detach().contiguous() for k, v in loaded.net.state_dict().items()}
        write_atomic(staged, safetensors_torch.save(state, metadata={"format": "pt"}))
        write_atomic(card_path(staged), json.dumps(card, indent=2) + "\n")
        return None
    require("timm", "timm", extra="bench")
    config = timm_config(loaded, card)
    state = timm_state_dict(loaded.net, build_timm_vit(loaded.net_config))
    staged.mkdir()
    write_atomic(staged / "model.safetensors", safetensors_torch.save(state, metadata={"format": "pt"}))
    write_atomic(staged / "config.json", json.dumps(config, indent=2) + "\n")
    return config


def load_back(fmt: str, staged: Path, written) -> torch.nn.Module:
    """The export as the other side loads it: onnxruntime, our safetensors loader, or ``timm.create_model``
    with the stated arguments and a strict ``load_state_dict``."""
    if fmt == "onnx":
        return OnnxNet(onnx_session(written.SerializeToString()))
    if fmt == "safetensors":
        return load_safetensors(staged).net
    import timm
    from safetensors.torch import load_file

    config = json.loads((staged / "config.json").read_text())
    args = {
        **config["model_args"],
        **exact_norm_args(),
    }  # the stated arguments, our LayerNorm epsilon included
    theirs = timm.create_model(config["architecture"], num_classes=config["num_classes"], **args)
    theirs.load_state_dict(load_file(str(staged / "model.safetensors")))  # strict: every tensor, no other
    return theirs.eval()


# ------------------------------------------------------------------------------------------ the check


def check_images(data_cfg: dict | None, spec: InputSpec, count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` test images of the data ``data_cfg`` describes, normalised as the network expects;
    random images (and a note saying so) when that data cannot be read."""
    if data_cfg:
        try:
            datamodule = evaluation_datamodule(data_cfg, spec, batch_size=max(1, count))
            datamodule.setup("test")
            images, _ = next(iter(datamodule.test_dataloader()))
            return images[:count], f"{len(images[:count])} test images of {datamodule.description}"
        except (DataError, InstantiationException) as err:
            while isinstance(err, InstantiationException) and err.__cause__ is not None:
                err = err.__cause__  # what the DataModule's constructor raised
            if not isinstance(err, DataError):
                raise
            note = f"no test images ({first_line(err)[:160]})"
    else:
        note = "no data configured"
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, 3, spec.image_size, spec.image_size, generator=generator)
    return images, f"{count} random images: {note}; pass data.root=<dataset> to check on real ones"


def compare(reference: torch.nn.Module, exported: torch.nn.Module, images: torch.Tensor) -> dict:
    """Largest difference of a class probability and the share of equal top-1 classes, image by image."""
    batches = images.split(64)
    ours, _ = predict_probs(reference, batches, torch.device("cpu"))
    theirs, _ = predict_probs(exported, batches, torch.device("cpu"))
    return {
        "max_abs_diff_probs": float((ours - theirs).abs().max()),
        "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).float().mean()),
    }


# ------------------------------------------------------------------------------------------ the job


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str,
    output: str | Path | None = None,
    data_cfg: dict | None = None,
    images: int = 256,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> dict:
    """Export ``ckpt_path`` as ``fmt``, check it against PyTorch, then write it; returns the report."""
    start = time.perf_counter()
    check_value("format", fmt, Choice(FORMATS))
    check_value("check_images", images, POSITIVE_INT)
    check_value("tolerance", tolerance, Number(low=0, low_open=True))
    check_value("opset", opset, Number(low=7, integer=True, hint="18: the default"))
    ckpt_path = Path(ckpt_path)
    loaded = load_classifier(ckpt_path)
    if fmt == "timm":
        timm_model_args(loaded.net_config)  # refuse what timm cannot hold before any work
    output = Path(output) if output else default_output(ckpt_path, fmt)
    check_output(output, fmt)
    spec = input_spec(loaded)
    card = model_card(loaded)
    x, source = check_images(data_cfg, spec, int(images))

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as scratch:
        staged = Path(scratch) / output.name
        written = write_export(loaded, fmt, staged, card, opset)
        check = compare(loaded.net, load_back(fmt, staged, written), x)
        check |= {"images": source, "tolerance": float(tolerance)}
        if not check["max_abs_diff_probs"] <= tolerance:
            raise VitCifarError(
                f"the {fmt} export differs from PyTorch by {check['max_abs_diff_probs']:.2e} in a probability "
                f"(tolerance {tolerance:g}) on {source}: nothing was written"
            )
        card["check"] = check
        _publish(fmt, staged, output, card)
    report = {
        "format": fmt,
        "output": str(output),
        "checkpoint": str(ckpt_path),
        "model": type(loaded.net).__name__,
        "params": card["params"],
        "check": check,
        "seconds": round(time.perf_counter() - start, 1),
    }
    files = {"onnx": [output], "safetensors": [output, card_path(output)], "timm": [output]}[fmt]
    print(
        f"wrote {' and '.join(str(f) for f in files)} | {report['model']}, {card['params']:,} params | "
        f"checked on {source}: max |p - p_torch| = {check['max_abs_diff_probs']:.2e}, "
        f"top-1 agreement {100 * check['top1_agreement']:.1f}%"
    )
    return report


def _publish(fmt: str, staged: Path, output: Path, card: dict) -> None:
    """Move the checked export into place: each file whole; the card (with the check) last."""
    if fmt == "onnx":
        onnx = require("onnx", "onnx")
        model = onnx.load(str(staged))
        onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(card)})
        write_atomic(output, model.SerializeToString())
    elif fmt == "safetensors":
        os.replace(staged, output)
        write_atomic(card_path(output), json.dumps(card, indent=2) + "\n")
    else:
        config = json.loads((staged / "config.json").read_text())
        config["vit_cifar"]["check"] = card["check"]
        write_atomic(staged / "config.json", json.dumps(config, indent=2) + "\n")
        if output.is_dir():
            shutil.rmtree(output)
        os.replace(staged, output)


def export(cfg: DictConfig) -> dict:
    """The ``python -m vit_cifar.export`` job (``configs/export.yaml``)."""
    ckpt_path = required_ckpt_path(cfg)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
    return export_checkpoint(
        ckpt_path,
        str(cfg.format),
        output=cfg.get("output"),
        data_cfg=data_cfg,
        images=cfg.check_images,
        tolerance=cfg.tolerance,
        opset=cfg.opset,
    )
