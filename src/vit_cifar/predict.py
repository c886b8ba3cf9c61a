"""Classify your own images: ``python -m vit_cifar.predict ckpt_path=<file> inputs=<file, folder or [a,b]>``.
Any size and mode (RGB, RGBA, grayscale, palette, 16-bit; PNG, JPEG, ...) becomes an RGB image of the network's
training size; an unreadable file is reported by its path and skipped, and the exit code (3) says so."""

from __future__ import annotations

import csv
import io
import json
import sys
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.checkpoints.loading import required_ckpt_path
from vit_cifar.config.entry import check_output_place, hydra_main, run_cli
from vit_cifar.data.sources import collect_image_files, decode_image
from vit_cifar.data.transforms import eval_transform
from vit_cifar.errors import (
    COUNT,
    POSITIVE_INT,
    ConfigError,
    DataError,
    SkippedInputsError,
    check,
    first_line,
)
from vit_cifar.inference.engine import input_spec, predict_probs, tta_mode
from vit_cifar.inference.runtime import check_runtime_options, open_for_inference

Predictions = list[tuple[str, list[tuple[str, float]]]]  # (path, [(class, probability), most probable first])
Skipped = list[tuple[str, str]]  # (path, why)


def load_image(path: Path, size: int) -> torch.Tensor:
    """A uint8 (3, size, size) tensor: the whole image converted to RGB and resized (not cropped)."""
    array = decode_image(path.read_bytes(), size, str(path))  # the data sources' decoder: one conversion
    return torch.from_numpy(array).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _read(path: Path, size: int, transform) -> tuple[torch.Tensor | None, str | None]:
    """The normalised image, or why the file cannot be read (it is skipped and the run goes on)."""
    try:
        return transform(load_image(path, size)), None
    except (DataError, OSError) as err:
        cause = err.__cause__ or err  # what the decoder said
        return None, f"{type(cause).__name__}: {first_line(cause)[:200]}"


def predict_files(
    ckpt_path: str | Path,
    inputs: str | list[str],
    top_k: int = 3,
    device: str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool | str = False,
    threads: int | None = None,
    runtime: str = "torch",
) -> tuple[Predictions, Skipped]:
    """Top-``k`` classes of every readable image among ``inputs``, and the paths skipped with why."""
    check("top_k", top_k, POSITIVE_INT)
    check("batch_size", batch_size, POSITIVE_INT)
    check("num_workers", num_workers, COUNT)
    check_runtime_options(runtime, device)
    tta_mode(tta)
    # Names that give no image are skipped and reported, as unreadable files are; none at all is a setting.
    files, skipped = collect_image_files(inputs)
    if not files:
        reason = f": {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ConfigError(f"inputs={inputs} holds no image files{reason}")
    loaded, dev, _ = open_for_inference(ckpt_path, runtime, device, threads)
    spec = input_spec(loaded)
    # batch_size=None: the files are decoded one at a time (in worker processes when asked), each by _read.
    read = partial(_read, size=spec.image_size, transform=eval_transform(spec.mean, spec.std))
    loader = DataLoader(files, batch_size=None, num_workers=int(num_workers), collate_fn=read)
    readable, images = [], []
    for path, (image, error) in zip(files, loader, strict=True):
        if error is None:
            readable.append(path)
            images.append(image)
        else:
            skipped.append((str(path), error))
    if not images:
        return [], skipped
    probs, _ = predict_probs(loaded.net, torch.stack(images).split(int(batch_size)), dev, tta=tta)
    values, indices = probs.topk(min(int(top_k), probs.shape[1]), dim=1)
    predictions = [
        (str(path), [(loaded.classes[i], v) for i, v in zip(idx, p, strict=True)])
        for path, p, idx in zip(readable, values.tolist(), indices.tolist(), strict=True)
    ]
    return predictions, skipped


def write_predictions(predictions: Predictions, skipped: Skipped, output: Path) -> None:
    """JSON (predictions and skipped files) or CSV (one row per path and rank), written whole or not at all."""
    if output.suffix.lower() == ".json":
        found = [
            {"path": path, "top": [{"class": c, "probability": v} for c, v in top]}
            for path, top in predictions
        ]
        unread = [{"path": path, "error": why} for path, why in skipped]
        text = json.dumps({"predictions": found, "skipped": unread}, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "class", "probability"])
        for path, top in predictions:
            writer.writerows([path, rank, c, f"{v:.6f}"] for rank, (c, v) in enumerate(top, start=1))
        text = buffer.getvalue()
    write_atomic(output, text)


def predict(cfg: DictConfig) -> dict:
    """The ``python -m vit_cifar.predict`` job (``configs/predict.yaml``)."""
    ckpt_path = required_ckpt_path(cfg)
    if not cfg.get("inputs"):
        raise ConfigError("inputs=<image file, folder, or [a.png,b.jpg]> is required")
    output = Path(cfg.output) if cfg.get("output") else None
    if output is not None:
        if output.suffix.lower() not in (".json", ".csv"):
            raise ConfigError(
                f"output={output} must end in .json or .csv (the format is taken from the extension)"
            )
        check_output_place(output, "output", folder=False)
    inputs = OmegaConf.to_container(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else str(cfg.inputs)
    options = ("top_k", "device", "batch_size", "num_workers", "tta", "threads", "runtime")
    predictions, skipped = predict_files(ckpt_path, inputs, **{key: cfg[key] for key in options})
    for path, top in predictions:
        print(f"{path}: " + " | ".join(f"{c} {100 * v:.1f}%" for c, v in top))
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if output is not None:
        write_predictions(predictions, skipped, output)
        print(f"wrote {len(predictions)} predictions to {output}")
    if skipped:
        raise SkippedInputsError(
            f"{len(skipped)} of {len(skipped) + len(predictions)} inputs skipped "
            f"(unreadable, listed above); the other {len(predictions)} were predicted"
        )
    return {"predictions": len(predictions)}


@hydra_main("predict")
def main(cfg: DictConfig) -> None:
    run_cli(predict, cfg)


if __name__ == "__main__":
    main()
