"""The benchmark's settings: its flags, and the recipe read from configs/ so it cannot drift from training's."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from vit_cifar.devices import CPU, local_device, resolve_precision
from vit_cifar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]  # the checkout: configs/ and benchmarks/ sit here
CONFIG_DIR = ROOT / "configs"
OVERHEAD_GOAL = 0.05
AUG_BATCHES = 8  # batches per augmentation measurement (2 with --tiny)
TINY_MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 2}


# ------------------------------------------------------------------------------------------ configuration


def group(name: str) -> dict:
    """A config group's file, e.g. ``aug/seed``."""
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def load_recipe(tiny: bool) -> dict:
    """The seed recipe from the config groups training uses by default (``configs/train.yaml``)."""
    data, model = group("data/cifar10"), group("model/vit_tiny")
    # The model's ${data.image_size} and ${data.num_classes}: the only interpolations these groups hold.
    model = {k: _from_data(v, data) for k, v in model.items()}
    if tiny:
        model.update(TINY_MODEL)
    trainer = group("trainer/default")
    return {
        "model": model,
        "optim": group("optim/adamw"),
        "scheduler": group("scheduler/warmup_cosine"),
        "aug": group("aug/seed"),
        "gradient_clip_val": trainer["gradient_clip_val"],
        "data": {k: data[k] for k in ("batch_size", "eval_batch_size", "num_workers", "mean", "std")},
    }


def _from_data(value, data: dict):
    """``${data.<key>}`` -> ``data[<key>]``; other values as they are."""
    if isinstance(value, str) and value.startswith("${data.") and value.endswith("}"):
        return data[value[len("${data.") : -1]]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vit_cifar.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA if any")
    p.add_argument("--precision", default="auto", help="auto: bf16/16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--batch-size", type=int, help="training batch (default: data.batch_size, 128)")
    p.add_argument("--steps", type=int, help="timed steps per repeat (default: CUDA 50, CPU 3)")
    p.add_argument("--warmup", type=int, help="untimed steps before each window (default: CUDA 10, CPU 1)")
    p.add_argument("--repeats", type=int, help="timed windows per variant (default: CUDA 5, CPU 3)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (train and infer)")
    p.add_argument("--device-aug", action="store_true", help="train with the GPU data path (data.device_aug)")
    p.add_argument("--data", help="dataset root as data.root (default: synthetic images)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the results JSON")
    p.add_argument("--tiny", action="store_true", help="tiny model, a few steps: checks that everything runs")
    p.add_argument(
        "--loader",
        action="store_true",
        help="only the training DataLoader a run uses, per worker count and aug preset (configs/aug), "
        "and the per-image cost of seeding",
    )
    p.add_argument("--workers", type=int, nargs="+", help="--loader: worker counts (default: 0 1 2 3 7)")
    # CPU inference side by side (issue #16): vit_cifar/bench/inference.py; --batch-size is then the eval batch
    p.add_argument("--inference", action="store_true", help="only CPU inference: eager, compile, ONNX, timm")
    p.add_argument(
        "--ckpt", help="--inference: a trained checkpoint (default: the recipe's ViT, random init)"
    )
    p.add_argument("--images", type=int, help="--inference: test images to classify (default: all of --data)")
    p.add_argument("--latency-images", type=int, help="--inference: images timed one by one (default 100)")
    p.add_argument("--variants", nargs="+", help="--inference: variants to run (default: all of them)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    cuda_wanted = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda_wanted else "cpu")
    cuda = device.type == "cuda"
    recipe = load_recipe(args.tiny)
    defaults = {"steps": 50 if cuda else 3, "warmup": 10 if cuda else 1, "repeats": 5 if cuda else 3}
    if args.loader:  # steps are batches; the warmup is at least the batches the workers prefetch
        defaults = {"steps": 10, "warmup": 1, "repeats": 3}
    if args.tiny:
        defaults = {"steps": 2, "warmup": 1, "repeats": 2}
    if args.compile:  # the first steps compile (and recompile for new shapes): keep them out of the window
        defaults["warmup"] = max(defaults["warmup"], 3)
    s = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    batch = args.batch_size
    if batch is None:
        batch = 16 if args.tiny else recipe["data"]["batch_size"]
    workers = args.workers or ([1] if args.tiny else [0, 1, 2, 3, 7])
    least = {"steps": 1, "repeats": 1, "warmup": 0, "batch-size": 1, "workers": 0}
    given = [*((k, s[k]) for k in ("steps", "repeats", "warmup")), ("batch-size", batch)]
    for key, value in given + [("workers", w) for w in workers]:
        if value < least[key]:
            raise ConfigError(f"--{key}={value} must be at least {least[key]}")
    spec = local_device("cuda") if cuda else CPU
    return {
        "device": device,
        "device_spec": spec,
        "precision": resolve_precision(args.precision, spec),
        "batch_size": batch,
        "eval_batch_size": 32 if args.tiny else recipe["data"]["eval_batch_size"],
        **s,
        "compile": args.compile,
        "device_aug": args.device_aug,
        "data": args.data,
        "tiny": args.tiny,
        "loader": args.loader,
        "workers": workers,
        "recipe": recipe,
    }
