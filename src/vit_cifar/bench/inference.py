"""CPU inference side by side, in one run: ``python -m vit_cifar.benchmark --inference [--ckpt <file>]
[--data <dataset>]``.

Variants (each skipped, with the reason, where its library is missing):
  * ``ours_eager``: our network in PyTorch, float32, ``inference_mode`` (what ``evaluate`` runs);
  * ``ours_compile``: the same under ``torch.compile`` (Inductor, one static shape per batch size);
  * ``ours_onnx``: the ONNX export (``python -m vit_cifar.export format=onnx``) under onnxruntime, float32;
  * ``ours_onnx_int8``: that export with onnxruntime's dynamic int8 quantisation of its weights (quantised:
    its accuracy is reported beside its speed, and it never counts for the goal);
  * ``timm_eager``: timm's ``VisionTransformer`` of the same shape holding our weights
    (``vit_cifar.inference.interop``), eager float32: the baseline.
Claim (issue #16): a variant of ours runs at least 1.3x as many images/s as timm eager at the evaluation batch
size (``configs/eval.yaml``: 64) with the same top-1 on the test images as our eager float32 network; the
report names the float32 and the quantised variants that meet it apart.

Method: every variant classifies the same images through the evaluation's loop
(:func:`vit_cifar.inference.engine.predict_probs`), in one process with the same threads; at the evaluation batch size
the variants take turns chunk by chunk (1,000 images each, the order rotating), so that they meet the same load
on a shared machine; at batch 1 likewise (25 images a turn), each image timed. Warm-up (and compilation) runs
first and is reported, not counted. Wall clock and process CPU time are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vit_cifar.checkpoints.loading import LoadedClassifier, load_classifier
from vit_cifar.errors import ConfigError, VitCifarError, first_line
from vit_cifar.inference.engine import input_spec, predict_probs
from vit_cifar.models.registry import build_network

SPEED_GOAL = 1.3
CHUNK = 1000  # images per variant per turn at the evaluation batch size
LATENCY_CHUNK = 25  # images per variant per turn at batch 1
BASELINE = "timm_eager"
REFERENCE = "ours_eager"


def eval_batch_size() -> int:
    """The evaluation's batch size, from ``configs/eval.yaml`` (so that it cannot drift)."""
    import yaml

    from vit_cifar.config.entry import CONFIG_DIR

    return int(yaml.safe_load((Path(CONFIG_DIR) / "eval.yaml").read_text())["batch_size"])


# ------------------------------------------------------------------------------------------ what is measured


def load_network(args: argparse.Namespace, model_cfg: dict) -> LoadedClassifier:
    """The checkpoint's network, or the recipe's (seed shape) randomly initialised with seed 0."""
    if args.ckpt:
        return load_classifier(args.ckpt)
    torch.manual_seed(0)
    net = build_network(model_cfg).eval()
    classes = [str(i) for i in range(net.num_classes)]
    return LoadedClassifier(net=net, classes=classes, net_config=dict(model_cfg))


def test_images(
    args: argparse.Namespace, loaded: LoadedClassifier
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Normalised test images (and labels) of ``--data``, or random images when no data is named."""
    spec = input_spec(loaded)
    if not args.data:
        count = args.images or (64 if args.tiny else 2000)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(count, 3, spec.image_size, spec.image_size, generator=generator)
        return x, None, f"{count} random images (no --data: speed only, no accuracy)"
    from vit_cifar.data import CIFARDataModule

    datamodule = CIFARDataModule(
        root=args.data,
        cache_dir=os.environ.get("VIT_CIFAR_CACHE", ".cache/vit_cifar"),
        download=False,
        image_size=spec.image_size,
        val_size=0,
        num_workers=0,
        eval_batch_size=1000,
        persistent_workers=False,
        mean=list(spec.mean),
        std=list(spec.std),
    )
    datamodule.setup("test")
    xs, ys = zip(*datamodule.test_dataloader(), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    if args.images:
        x, y = x[: args.images], y[: args.images]
    return x, y, f"{len(y):,} test images of {datamodule.description}"


def build_variants(
    loaded: LoadedClassifier, scratch: Path, x: torch.Tensor, batch: int, log, wanted: list[str] | None = None
) -> tuple[dict, dict, dict]:
    """name -> (network, whether its batches are padded to one shape); name -> why it was skipped; name ->
    seconds of warm-up (and compilation) on a batch of ``batch`` and one of 1."""
    from vit_cifar.inference.export import onnx_model
    from vit_cifar.inference.interop import to_timm
    from vit_cifar.inference.runtime import OnnxNet, model_card, onnx_session

    net = loaded.net.eval()
    variants: dict[str, tuple[nn.Module, bool]] = {}
    skipped: dict[str, str] = {}
    warmup: dict[str, float] = {}

    def attempt(name: str, make) -> None:
        if wanted is not None and name not in wanted:
            return
        tic = time.perf_counter()
        try:
            variant, pad = make()
            for size in (batch, 1):  # torch.compile compiles here, once per shape
                timed(variant, x[:size], size, pad)
        except Exception as err:  # a variant that cannot run is reported, not fatal: the others still are
            skipped[name] = f"{type(err).__name__}: {first_line(err)[:300]}"
            log(f"  {name}: skipped ({skipped[name]})")
            return
        variants[name] = (variant, pad)
        warmup[name] = round(time.perf_counter() - tic, 2)
        log(f"  {name}: built and warmed up in {warmup[name]:.1f} s")

    attempt(BASELINE, lambda: (to_timm(net, loaded.net_config), False))
    attempt(REFERENCE, lambda: (net, False))
    # Inductor with freezing: weights folded in as constants and pre-packed for oneDNN, PyTorch's advice for
    # CPU inference; one static shape per batch size (the short last batch is padded, as in scripts/).
    compile_options = {"freezing": True}
    attempt(
        "ours_compile",
        lambda: (torch.compile(copy.deepcopy(net), dynamic=False, options=compile_options), True),
    )
    onnx_file = scratch / "model.onnx"

    def onnx_fp32():
        model = onnx_model(net, model_card(loaded), opset=18)
        onnx_file.write_bytes(model.SerializeToString())
        return OnnxNet(onnx_session(onnx_file)), False

    def onnx_int8():
        if not onnx_file.is_file():
            onnx_file.write_bytes(onnx_model(net, model_card(loaded), opset=18).SerializeToString())
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_file = scratch / "model.int8.onnx"
        quantize_dynamic(str(onnx_file), str(int8_file), weight_type=QuantType.QInt8)
        return OnnxNet(onnx_session(int8_file)), False

    attempt("ours_onnx", onnx_fp32)
    attempt("ours_onnx_int8", onnx_int8)
    return variants, skipped, warmup


WHAT = {
    "ours_eager": "our network, PyTorch eager, float32",
    "ours_compile": "our network, torch.compile (Inductor, freezing), float32",
    "ours_onnx": "our ONNX export, onnxruntime (CPU, all graph optimisations), float32",
    "ours_onnx_int8": "our ONNX export, onnxruntime dynamic int8 quantisation (weights int8), quantised",
    "timm_eager": "timm's VisionTransformer of the same shape with our weights, PyTorch eager, float32",
}


# ------------------------------------------------------------------------------------------ timing


def timed(net: nn.Module, x: torch.Tensor, batch: int, pad: bool) -> tuple[float, float, torch.Tensor]:
    """Wall and CPU seconds to classify ``x`` in batches of ``batch``, and the probabilities."""
    wall, cpu = time.perf_counter(), time.process_time()
    probs, _ = predict_probs(net, x.split(batch), torch.device("cpu"), pad_to=batch if pad else None)
    return time.perf_counter() - wall, time.process_time() - cpu, probs


def rotate(names: list[str], turn: int) -> list[str]:
    k = turn % len(names)
    return names[k:] + names[:k]


def measure(variants: dict, x: torch.Tensor, batch: int, latency_images: int, log) -> dict:
    names = list(variants)
    out = {n: {"wall": [], "cpu": [], "probs": [], "latency": []} for n in names}
    for turn, start in enumerate(range(0, len(x), CHUNK)):
        chunk = x[start : start + CHUNK]
        for name in rotate(names, turn):
            net, pad = variants[name]
            wall, cpu, probs = timed(net, chunk, batch, pad)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
            out[name]["probs"].append(probs)
        done = start + len(chunk)
        log(
            f"  batch {batch}: {done:,}/{len(x):,} images "
            + ", ".join(f"{n} {done / sum(out[n]['wall']):,.0f}/s" for n in names)
        )
    singles = x[: min(latency_images, len(x))]
    for turn, start in enumerate(range(0, len(singles), LATENCY_CHUNK)):
        for name in rotate(names, turn):
            net, pad = variants[name]
            for image in singles[start : start + LATENCY_CHUNK].split(1):
                out[name]["latency"].append(timed(net, image, 1, pad)[0])
    return out


def summarise(raw: dict, warmup: dict, x: torch.Tensor, labels: torch.Tensor | None, batch: int) -> dict:
    batches = -(-len(x) // batch)
    reference = torch.cat(raw[REFERENCE]["probs"]) if REFERENCE in raw else None
    results = {}
    for name, r in raw.items():
        probs = torch.cat(r["probs"])
        wall, cpu = sum(r["wall"]), sum(r["cpu"])
        latency = sorted(r["latency"])
        result = {
            "what": WHAT[name],
            "quantised": "int8" in name,
            "build_and_warmup_s": warmup[name],
            f"batch_{batch}": {
                "images_per_s": round(len(x) / wall, 1),
                "images_per_cpu_s": round(len(x) / cpu, 1),
                "latency_ms_per_batch": round(1000 * wall / batches, 2),
                "wall_s": round(wall, 2),
                "chunks_s": [round(s, 3) for s in r["wall"]],
            },
        }
        if latency:
            result["batch_1"] = {
                "images_per_s": round(len(latency) / sum(latency), 1),
                "latency_ms_median": round(1000 * statistics.median(latency), 3),
                "latency_ms_p90": round(1000 * latency[int(0.9 * (len(latency) - 1))], 3),
                "images": len(latency),
            }
        if labels is not None:
            correct = int((probs.argmax(1) == labels).sum())
            result["top1"] = round(correct / len(labels), 4)
            result["correct"] = correct
        if reference is not None:
            result["agreement_with_ours_eager"] = round(
                float((probs.argmax(1) == reference.argmax(1)).float().mean()), 4
            )
            result["max_abs_diff_probs_vs_ours_eager"] = float((probs - reference).abs().max())
        results[name] = result
    key = f"batch_{batch}"
    if BASELINE in results:
        base = results[BASELINE][key]["images_per_s"]
        for r in results.values():
            r["over_timm_eager"] = round(r[key]["images_per_s"] / base, 3)
            if "batch_1" in r and "batch_1" in results[BASELINE]:
                r["over_timm_eager_batch_1"] = round(
                    r["batch_1"]["images_per_s"] / results[BASELINE]["batch_1"]["images_per_s"], 3
                )
    return results


def goal(results: dict, batch: int, labels: torch.Tensor | None) -> dict:
    """Which variants of ours reach the speed goal with the same top-1 as our eager float32 network (on the
    test images; without labels, predicting the same class for every image), float32 and quantised apart."""
    claim = f"a variant of ours >= {SPEED_GOAL}x timm eager images/s at batch {batch}, same top-1 as eager"
    if BASELINE not in results or REFERENCE not in results:
        return {"claim": claim, "met": None, "why": "timm or our eager network was not measured"}
    if labels is not None:
        same = {n: r["top1"] == results[REFERENCE]["top1"] for n, r in results.items()}
    else:
        same = {n: r["agreement_with_ours_eager"] == 1.0 for n, r in results.items()}
    fast = {n for n, r in results.items() if n.startswith("ours") and r["over_timm_eager"] >= SPEED_GOAL}
    meeting = [n for n in results if n in fast and same[n]]
    return {
        "claim": claim,
        "met": bool(meeting),
        "variants_meeting_it": meeting,
        "float32_variants_meeting_it": [n for n in meeting if not results[n]["quantised"]],
        "fast_enough_but_other_top1": [n for n in results if n in fast and not same[n]],
        "fastest": max(
            (n for n in results if n.startswith("ours")), key=lambda n: results[n]["over_timm_eager"]
        ),
    }


# ------------------------------------------------------------------------------------------ the report


def table(report: dict) -> str:
    batch = report["config"]["eval_batch_size"]
    key = f"batch_{batch}"
    lines = [
        f"| variant | images/s, batch {batch} | ms per batch | vs timm eager | images/s, batch 1 | ms per image "
        "(median) | top-1 | agreement with eager | build + warm-up s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        b1 = r.get("batch_1", {})
        top1 = f"{100 * r['top1']:.2f}%" if "top1" in r else "n/a"
        agree = f"{100 * r['agreement_with_ours_eager']:.2f}%" if "agreement_with_ours_eager" in r else "n/a"
        ratio = f"{r['over_timm_eager']:.2f}x" if "over_timm_eager" in r else "n/a"
        lines.append(
            f"| {name} | {r[key]['images_per_s']:,.1f} | {r[key]['latency_ms_per_batch']:.1f} | {ratio} | "
            f"{b1.get('images_per_s', float('nan')):,.1f} | {b1.get('latency_ms_median', float('nan')):.2f} | "
            f"{top1} | {agree} | {r['build_and_warmup_s']:.1f} |"
        )
    for name, why in report["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    g = report["goal"]
    lines.append(
        f"goal: {g['claim']}: {'met' if g['met'] else 'not met' if g['met'] is False else 'not measured'}"
        + (f" ({', '.join(g['variants_meeting_it'])})" if g.get("variants_meeting_it") else "")
    )
    return "\n".join(lines)


def output_path(out: Path, threads: int, tiny: bool) -> Path:
    stem = f"{dt.date.today().isoformat()}-cpu-{threads}thread{'' if threads == 1 else 's'}-inference"
    stem += "-tiny" if tiny else ""
    path, n = out / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out / f"{stem}-{n}.json"
    return path


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("onnx", "onnxruntime", "onnxscript", "safetensors", "timm"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def run_inference(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """The ``--inference`` benchmark: measure, print the table, write the JSON; returns the report."""
    from vit_cifar.bench import report, settings

    log = partial(print, flush=True)
    if args.device not in ("auto", "cpu"):
        raise ConfigError("--inference measures CPU inference: leave out --device or use --device cpu")
    batch = args.batch_size or (8 if args.tiny else eval_batch_size())
    latency_images = args.latency_images if args.latency_images is not None else (4 if args.tiny else 100)
    if batch < 1 or latency_images < 0 or (args.images is not None and args.images < 1):
        raise ConfigError("--batch-size and --images must be at least 1, --latency-images at least 0")
    unknown = sorted(set(args.variants or []) - set(WHAT))
    if unknown or (args.variants and REFERENCE not in args.variants):
        raise ConfigError(
            f"--variants {' '.join(args.variants)}: choose among {', '.join(WHAT)}, {REFERENCE} included"
        )
    model_cfg = settings.load_recipe(args.tiny)["model"]
    loaded = load_network(args, model_cfg)
    x, labels, data = test_images(args, loaded)
    load_before = os.getloadavg()
    log(
        f"inference benchmark: {data}, batch {batch} and 1, {torch.get_num_threads()} threads, "
        f"load average {load_before[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        variants, skipped, warmup = build_variants(loaded, Path(scratch), x, batch, log, args.variants)
        if REFERENCE not in variants:
            raise VitCifarError(f"our network could not be run: {skipped.get(REFERENCE)}")
        raw = measure(variants, x, batch, latency_images, log)
    results = summarise(raw, warmup, x, labels, batch)
    device = report.device_info(torch.device("cpu"))
    report = {
        "benchmark": "python -m vit_cifar.benchmark " + " ".join(argv or []),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device,
        "versions": report.versions() | library_versions(),
        "git": report.git_state(),
        "config": {
            "eval_batch_size": batch,
            "latency_images": latency_images,
            "threads": torch.get_num_threads(),
            "data": data,
            "weights": str(args.ckpt)
            if args.ckpt
            else "random init, seed 0 (speed does not depend on weights)",
            "model": {k: v for k, v in loaded.net_config.items()},
            "params": sum(p.numel() for p in loaded.net.parameters()),
        },
        "results": results,
        "skipped": skipped,
        "goal": goal(results, batch, labels),
        "load_average": {
            "before": list(load_before),
            "after": list(os.getloadavg()),
            "cpu_count": os.cpu_count(),
        },
    }
    out = output_path(Path(args.out), device["threads"], args.tiny)
    out.parent.mkdir(parents=True, exist_ok=True)
    from vit_cifar.checkpoints.atomic import write_atomic

    write_atomic(out, json.dumps(report, indent=2) + "\n")
    log(table(report))
    log(f"written: {out}")
    report["path"] = str(out)
    return report
