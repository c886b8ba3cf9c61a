"""How fast vit-cifar trains, loads and infers on this machine (``vit-cifar-benchmark``; docs/performance.md).

Training's own job is timed beside one plain PyTorch loop (:mod:`vit_cifar.bench.training`), on synthetic images
unless ``--data`` (as costly to augment and train on); each run writes its results file in ``benchmarks/results/``."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from functools import partial
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from vit_cifar.bench.inference import REFERENCE, VARIANTS, measure_inference
from vit_cifar.bench.training import measure_loader, measure_training
from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.config.entry import check_output_place, compose_config, preflight, run_cli
from vit_cifar.devices import cpu_bf16, cpu_model, local_device
from vit_cifar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: benchmarks/ sits here
# --tiny: a model that trains in milliseconds, on small batches made in the training process
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
TINY += ["data.batch_size=16", "data.num_workers=0"]
# every measurement: all images trained on, none tested, no checkpoints (written at epoch ends, after the windows)
FIXED = ["test=false", "++data.val_size=0", "++data.download=false", "++trainer.enable_checkpointing=false"]
FIXED += ["++callbacks.model_checkpoint=null", "++callbacks.last_checkpoint=null"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vit_cifar.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="train overrides, e.g. data.batch_size=256")
    p.add_argument("--experiment", default="seed", help="a recipe of configs/experiment (default: seed)")
    p.add_argument("--compile", action="store_true", help="also time the compiled network (compile=true)")
    p.add_argument("--steps", type=int, help="steps per timed window (default: CUDA 50, CPU 3)")
    p.add_argument("--warmup", type=int, help="untimed first steps (CUDA 10, CPU 1; --compile: 3)")
    p.add_argument("--repeats", type=int, help="timed windows (default: CUDA 5, CPU 3)")
    p.add_argument("--data", help="dataset root, as data.root (default: synthetic images)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the results JSON")
    p.add_argument("--tiny", action="store_true", help="a tiny model and a few steps: checks that all runs")
    p.add_argument("--loader", action="store_true", help="only the training DataLoader, per aug and workers")
    p.add_argument("--workers", type=int, nargs="+", help="--loader: worker counts (default: 0 1 2 3 7)")
    p.add_argument("--inference", action="store_true", help="only CPU inference: eager, compile, ONNX, timm")
    p.add_argument("--ckpt", help="--inference: a checkpoint (default: the recipe's network, random init)")
    p.add_argument("--images", type=int, help="--inference: images (default: all of --data, or 2000)")
    p.add_argument("--latency-images", type=int, help="--inference: images timed one by one (default 100)")
    p.add_argument("--variants", nargs="+", help="--inference: the variants to run (default: all)")
    args = p.parse_args(argv)
    counts = [(k, getattr(args, k), 1) for k in ("steps", "warmup", "repeats", "images")]
    counts += [("latency_images", args.latency_images, 0)] + [("workers", w, 0) for w in args.workers or []]
    for key, value, low in counts:
        if value is not None and value < low:
            raise ConfigError(f"--{key.replace('_', '-')}={value} must be at least {low}")
    if args.variants and (set(args.variants) - set(VARIANTS) or REFERENCE not in args.variants):
        raise ConfigError(f"--variants: choose among {', '.join(VARIANTS)}, {REFERENCE} included")
    return args


def environment(device: torch.device) -> dict:
    """The device, library versions and git state to keep beside every measurement."""
    info = {"type": device.type, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    info |= {"cpu": cpu_model(), "name": cpu_model(), "bf16": cpu_bf16(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
        info |= {"capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "lightning", "timm", "onnxruntime"):  # None: not installed
        versions[package] = version(package) if find_spec(package) else None
    git = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=10)
    try:
        sha = git(["git", "rev-parse", "HEAD"]).stdout.strip() or "unknown"
        state = {"sha": sha, "dirty": bool(git(["git", "status", "--porcelain"]).stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        state = {"sha": "unknown", "dirty": None}
    return {"device": info, "versions": versions, "git": state}


def result_path(out: Path, device: dict, mode: str) -> Path:
    """``<date>-<device><mode>.json`` (``2026-11-27-cpu-2threads.json``); a later run of the same day and device
    gets -2, -3, ... rather than replacing it."""
    slug = f"cpu-{device['threads']}thread{'' if device['threads'] == 1 else 's'}"
    if device["type"] == "cuda":
        slug = "cuda-" + re.sub(r"[^a-z0-9]+", "-", device["name"].lower()).strip("-")
    stem = f"{dt.date.today().isoformat()}-{slug}{mode}"
    names = (f"{stem}{f'-{n}' if n > 1 else ''}.json" for n in itertools.count(1))
    return next(out / name for name in names if not (out / name).exists())


def table(report: dict) -> str:
    """The printed summary: images/s, mean ± std over the windows, by the wall clock (and per CPU-second)."""

    def row(label: str, r: dict) -> str:
        cpu = f" {r['per_cpu_second']['mean']:>10,.1f} per CPU-s" if "per_cpu_second" in r else ""
        return f"{label:<36}{r['mean']:>12,.1f} ± {r['std']:<9,.1f}{cpu}"

    lines = [f"device: {report['device']['name']} ({report['device']['threads']} threads); images/s"]
    for variant, t in report.get("training", {}).items():
        lines.append(row(f"train, {variant}, Lightning", t["lightning"]))
        lines.append(row(f"train, {variant}, plain loop", t["plain"]))
        lines.append(f"{'  Lightning overhead':<36}{100 * t['lightning_overhead']:>11.1f}%")
    if "compile_s" in report:
        lines.append(f"{'compile time (s), beside eager':<36}{report['compile_s']:>12.1f}")
    lines += [row(f"loader, {key}", r) for key, r in report.get("loader", {}).items()]
    for name, r in report.get("inference", {}).get("results", {}).items():
        ratio = f"{r['over_timm_eager']:.2f}x timm" if "over_timm_eager" in r else ""
        lines.append(f"{'infer, ' + name:<36}{r['images_per_s']:>12,.1f}  {ratio}")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Measure what the flags ask for, print the table, write the results file; returns the report."""
    args = parse_args(argv)
    check_output_place(args.out, "--out", folder=True)  # before minutes of measuring
    overrides = [f"experiment={args.experiment}", *(TINY if args.tiny else []), *args.overrides, *FIXED]
    preflight("train", overrides)  # a bad override: one line, exit 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        cfg = compose_config(overrides, scratch)
        cuda = local_device(cfg.trainer.accelerator).type == "cuda"
        steps, warmup, repeats = (50, 10, 5) if cuda else (10, 1, 3) if args.loader else (3, 1, 3)
        steps, warmup, repeats = (2, 1, 2) if args.tiny else (steps, warmup, repeats)
        warmup = max(warmup, 3) if args.compile else warmup  # recompiles for new shapes: not in a window
        steps, warmup, repeats = args.steps or steps, args.warmup or warmup, args.repeats or repeats
        with open_dict(cfg):
            if args.data:
                cfg.data.root = args.data
            else:  # synthetic images, enough for all the batches in one epoch
                batches = warmup + steps * repeats + 2 * max(args.workers or [7])
                cfg.data.source = "synthetic"
                per_class = -(-cfg.data.batch_size * batches // cfg.data.num_classes)
                cfg.data.synthetic = {"train_per_class": per_class, "test_per_class": 1}
        report = environment(torch.device("cuda" if cuda and not args.inference else "cpu")) | {
            "benchmark": "python -m vit_cifar.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "config": {"steps": steps, "warmup": warmup, "repeats": repeats},
        }
        report["config"]["recipe"] = OmegaConf.to_container(cfg, resolve=True)
        print(f"benchmark on {report['device']['name']}, {torch.get_num_threads()} threads")
        if args.loader:
            workers = args.workers or ([1] if args.tiny else [0, 1, 2, 3, 7])
            report["loader"] = measure_loader(cfg, workers, steps, warmup, repeats)
        elif args.inference:
            report["inference"] = measure_inference(args, cfg)
        else:
            report["training"] = training = {"eager": measure_training(cfg, steps, warmup, repeats, False)}
            if args.compile:
                training["compiled"] = measure_training(cfg, steps, warmup, repeats, True)
                first = [training[v]["lightning"]["first_steps_s"] for v in ("compiled", "eager")]
                report["compile_s"] = first[0] - first[1]
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    mode = "-loader" if args.loader else "-inference" if args.inference else ""
    out = result_path(Path(args.out), report["device"], mode + ("-tiny" if args.tiny else ""))
    write_atomic(out, json.dumps(report, indent=2) + "\n")
    print(f"{table(report)}\nwritten: {out}")
    return report | {"path": str(out)}


def main(argv: list[str] | None = None) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it comes, in a log file too
    run_cli(run, argv)  # a user error: one line on stderr, its exit code


if __name__ == "__main__":
    main()
