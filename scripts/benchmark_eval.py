"""Benchmark: evaluating the 10,000 CIFAR-10 test images on CPU, our ViT-Tiny beside timm's of the same shape.

Claim checked: our evaluation path is at least as fast as timm's eager VisionTransformer (img_size 32,
patch 4, dim 192, depth 12, heads 3, no qkv bias, 10 classes; it has one LayerNorm fewer, which does not
matter for speed).
Evidence: both networks go through the same loop (``vit_cifar.inference.engine.predict_probs``) over the same
DataLoader (the JPEG copy's test split, decoded once, normalised per image), in one process, same threads.
Timing: wall clock. On a shared machine one pass is at the mercy of the neighbours, so the variants take
turns chunk by chunk (1,000 images each) through the 10,000 images: each variant's total is its full pass,
and all met the same load; each chunk's speed is kept too (best, median). Hardware, threads, load average
and the git SHA are saved beside the numbers in ``benchmarks/results/<date>-cpu-<cores>cores.json``.

    python scripts/benchmark_eval.py [--data /path/to/cifar10-jpeg.tar.gz] [--ckpt <file.ckpt>]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.data import CIFARDataModule
from vit_cifar.inference.engine import cpu_model, predict_probs
from vit_cifar.models import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
SEED_SHAPE = dict(
    img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, qkv_bias=False, num_classes=10
)


def build(name: str, ckpt: str | None) -> torch.nn.Module:
    """``ours`` (from the checkpoint when given, else the seed's shape, randomly initialised) or ``timm``'s
    ViT of the same shape (randomly initialised: speed does not depend on the weights)."""
    loaded = load_classifier(ckpt) if ckpt else None
    shape = {k: loaded.net_config[k] for k in SEED_SHAPE} if loaded else SEED_SHAPE
    if name == "ours":
        return loaded.net if loaded else VisionTransformer(**shape).eval()
    import timm.models.vision_transformer as tv

    return tv.VisionTransformer(**shape, mlp_ratio=loaded.net_config["mlp_ratio"] if loaded else 4.0).eval()


def prepare(net: torch.nn.Module, mode: str) -> tuple[torch.nn.Module, torch.dtype | None]:
    """``eager`` (float32), ``bf16`` (autocast) or ``compile`` (Inductor, float32, one batch shape)."""
    if mode not in ("eager", "bf16", "compile"):
        raise SystemExit(f"unknown mode {mode}: use eager, bf16 or compile")
    net = torch.compile(net, dynamic=False) if mode == "compile" else net
    return net, torch.bfloat16 if mode == "bf16" else None


def timed_pass(net, dtype, loader: DataLoader) -> tuple[float, torch.Tensor]:
    """Seconds for one pass over ``loader`` through the evaluation's loop, and the predicted classes."""
    tic = time.perf_counter()
    probs, _ = predict_probs(net, loader, torch.device("cpu"), dtype=dtype, pad_to=loader.batch_size)
    return time.perf_counter() - tic, probs.argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--cache-dir", default=os.environ.get("VIT_CIFAR_CACHE", ".cache/vit_cifar"))
    parser.add_argument("--ckpt", help="a trained checkpoint for our model (accuracy and agreement reported)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["timm:eager", "ours:eager", "ours:bf16"],
        help="model:mode[:batch], model ours|timm, mode eager|bf16|compile",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--images", type=int, default=10000, help="test images each variant evaluates")
    parser.add_argument("--chunk", type=int, default=1000, help="images per interleaved chunk")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    datamodule = CIFARDataModule(
        root=args.data,
        cache_dir=args.cache_dir,
        val_size=0,
        num_workers=0,
        eval_batch_size=args.batch_size,
        persistent_workers=False,
    )
    datamodule.setup("test")
    test_set = datamodule.test_set
    labels = test_set.labels

    def loader(start: int, stop: int, batch_size: int) -> DataLoader:
        return DataLoader(Subset(test_set, range(start, min(stop, len(test_set)))), batch_size=batch_size)

    nets = {}  # variant -> (network, autocast dtype, batch size)
    for variant in args.variants:
        model, mode, *batch = variant.split(":")
        nets[variant] = (*prepare(build(model, args.ckpt), mode), int(batch[0]) if batch else args.batch_size)

    load_before = os.getloadavg()
    results: dict[str, dict] = {v: {"chunks_s": []} for v in args.variants}
    predictions: dict[str, list[torch.Tensor]] = {v: [] for v in args.variants}
    for variant, (net, dtype, batch) in nets.items():  # warm-up; for compile, the compilation
        results[variant]["first_batch_s"] = round(timed_pass(net, dtype, loader(0, batch, batch))[0], 2)
    # Every variant evaluates the same images, chunk by chunk in turn, so that they share the machine's load.
    n = min(args.images, len(test_set))
    for start in range(0, n, args.chunk):
        for variant, (net, dtype, batch) in nets.items():
            seconds, predicted = timed_pass(net, dtype, loader(start, min(start + args.chunk, n), batch))
            results[variant]["chunks_s"].append(round(seconds, 3))
            predictions[variant].append(predicted)
    for variant, r in results.items():
        per_chunk = [min(args.chunk, n - i * args.chunk) / s for i, s in enumerate(r["chunks_s"])]
        r["images"] = n
        r["wall_s"] = round(sum(r["chunks_s"]), 1)
        r["images_per_s"] = round(n / sum(r["chunks_s"]), 1)
        r["best_chunk_images_per_s"] = round(max(per_chunk), 1)
        r["median_chunk_images_per_s"] = round(statistics.median(per_chunk), 1)
        predictions[variant] = torch.cat(predictions[variant])
        if args.ckpt and variant.startswith("ours"):
            r["accuracy"] = round(float((predictions[variant] == labels[:n]).float().mean()), 4)
    load_after = os.getloadavg()
    exact = next((v for v in predictions if v.startswith("ours:eager")), None)
    if exact and args.ckpt:  # how often another mode changes a trained model's exact float32 prediction
        for variant, predicted in predictions.items():
            if variant.startswith("ours:") and variant != exact:
                agree = (predicted == predictions[exact]).float().mean()
                results[variant]["agreement_with_float32"] = round(float(agree), 4)

    base = next((v for v in results if v.startswith("timm:eager")), args.variants[0])
    print(f"| variant | first batch s | {n:,} images s | images/s | best chunk | median chunk | vs {base} |")
    print("|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        ratio = r["images_per_s"] / results[base]["images_per_s"]
        print(
            f"| {variant} | {r['first_batch_s']:.1f} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | "
            f"{r['best_chunk_images_per_s']:.1f} | {r['median_chunk_images_per_s']:.1f} | {ratio:.2f}x |"
        )
    for variant, r in results.items():
        for key in ("accuracy", "agreement_with_float32"):
            if key in r:
                print(f"{variant} {key}: {r[key]:.4f}")

    record = {
        "claim": "our evaluation path is at least as fast as timm's eager VisionTransformer, same shape",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "hardware": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": _timm_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "data": datamodule.description,
        "weights": args.ckpt or "random init (speed does not depend on the weights)",
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.now():%Y-%m-%d-%H%M}-cpu-{os.cpu_count()}cores.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def _git_sha() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _timm_version() -> str | None:
    try:
        import timm

        return timm.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
