"""The benchmark's run and its report: the device, library versions and git state beside every measurement,
the results file and the table."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import torch

from vit_cifar.bench.settings import ROOT, parse_args, settings_from
from vit_cifar.bench.training import (
    measure_augmentation,
    measure_inference,
    measure_loader,
    measure_optimizer,
    measure_training,
)
from vit_cifar.config.entry import check_output_place
from vit_cifar.inference.engine import cpu_model

# ------------------------------------------------------------------------------------------ the report


def device_info(device: torch.device) -> dict:
    info = {
        "type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    else:
        info["name"] = info["cpu"]
    return info


def versions() -> dict:
    import lightning
    import torchvision

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
    }
    try:
        import timm

        found["timm"] = timm.__version__
    except ImportError:
        found["timm"] = None
    return found


def git_state() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    try:
        return {"sha": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}


def result_path(out: Path, device: dict, tiny: bool, mode: str = "") -> Path:
    """``<date>-<device><mode>.json``, e.g. ``2026-11-27-cpu-2threads.json``,
    ``2026-11-28-cuda-nvidia-h100-80gb-hbm3.json``, ``2026-12-06-cpu-2threads-loader.json``; a later run of
    the same day and device gets -2, -3, ... rather than replacing it."""
    slug = f"cpu-{device['threads']}thread{'' if device['threads'] == 1 else 's'}"
    if device["type"] == "cuda":
        slug = "cuda-" + re.sub(r"[^a-z0-9]+", "-", device["name"].lower()).strip("-")
    stem = f"{dt.date.today().isoformat()}-{slug}{mode}{'-tiny' if tiny else ''}"
    path, n = out / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out / f"{stem}-{n}.json"
    return path


def table(report: dict) -> str:
    def row(what: str, r: dict | None) -> str:
        if not r:
            return f"{what:<50} {'skipped':>12}"
        line = f"{what:<50} {r['mean']:>12,.1f} ± {r['std']:<10,.1f}"
        cpu = r.get("per_cpu_second")
        return line + (f" {cpu['mean']:>12,.1f} ± {cpu['std']:,.1f}" if cpu else "")

    t, i, a = report["training"], report["inference"], report["augmentation"]
    device, config, load = report["device"], report["config"], report["load_average"]
    cpu_overhead = t.get("lightning_overhead_cpu_time")
    lines = [
        f"device: {device['name']} ({device['type']}, {device['threads']} threads), precision "
        f"{config['precision']}, compile {config['compile']}, device_aug {config['device_aug']}, "
        f"load average {load['before'][0]:.1f} -> {load['after'][0]:.1f}",
        f"{'images/s, mean ± std over ' + str(config['repeats']) + ' repeats':<50} {'wall clock':>25}"
        + (f" {'per CPU-second':>25}" if device["type"] == "cpu" else ""),
        row(f"train, Lightning (batch {config['batch_size']})", t["lightning"]),
        row("train, plain PyTorch loop", t["plain"]),
        f"{'  Lightning overhead (goal <= 5%)':<50} {100 * t['lightning_overhead']:>11.1f}%"
        + (f" {100 * cpu_overhead:>24.1f}%" if cpu_overhead is not None else ""),
        row(f"inference, ours (batch {config['eval_batch_size']})", i["ours"]),
        row("inference, timm VisionTransformer", i.get("timm")),
    ]
    if "ours_over_timm" in i:
        lines.append(f"{'  ours / timm (goal >= 1)':<50} {i['ours_over_timm']:>12.2f}")
    o = report.get("optimizer")
    if o:
        lines += [row("AdamW steps/s, fused", o["fused"]), row("AdamW steps/s, foreach", o["foreach"])]
    lines += [row(f"augmentation, {k.replace('_', ' ')}", v) for k, v in a.items() if isinstance(v, dict)]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_place(args.out, "--out", folder=True)  # before minutes of measuring
    if args.inference:
        from vit_cifar.bench.inference import run_inference

        return run_inference(args, argv if argv is not None else sys.argv[1:])
    s = settings_from(args)
    log = partial(print, flush=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: ..." per fit
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings(
        "ignore", message="This DataLoader will create"
    )  # --loader: more workers than CPUs
    load_before = os.getloadavg()
    log(f"benchmark on {s['device']}, {torch.get_num_threads()} threads, load average {load_before[0]:.1f}")
    report = {
        "benchmark": "python -m vit_cifar.benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_info(s["device"]),
        "versions": versions(),
        "git": git_state(),
        "config": {k: str(v) if k in ("device", "device_spec") else v for k, v in s.items()},
    }
    if s["loader"]:
        report["loader"] = measure_loader(s, log)
    else:
        report["training"] = measure_training(s, log)
        report["inference"] = measure_inference(s, log)
        report["optimizer"] = measure_optimizer(s, log)
        report["augmentation"] = measure_augmentation(s)
    report["load_average"] = {
        "before": list(load_before),
        "after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    out = result_path(Path(args.out), report["device"], s["tiny"], "-loader" if s["loader"] else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not s["loader"]:  # the loader's rates were printed as measured
        log(table(report))
    log(f"written: {out}")
    report["path"] = str(out)
    return report
