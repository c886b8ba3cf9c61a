"""CPU inference side by side (``--inference``): every variant classifies the same images through the evaluation's
own loop (:func:`vit_cifar.inference.engine.predict_probs`) in one process, taking turns 1,000 images at a time (the
order rotating) so that all meet the same load on a shared machine; then at batch 1, each image timed. Building
and warming up (compiling) are reported, not counted; a variant whose library is missing is skipped, with why."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vit_cifar.checkpoints.loading import LoadedClassifier, load_classifier
from vit_cifar.config.entry import compose_config
from vit_cifar.errors import VitCifarError, first_line
from vit_cifar.inference.engine import evaluation_datamodule, input_spec, predict_probs
from vit_cifar.inference.export import onnx_model
from vit_cifar.inference.interop import to_timm
from vit_cifar.inference.runtime import OnnxNet, model_card, onnx_session
from vit_cifar.models.registry import build_network

VARIANTS = {
    "timm_eager": "timm's VisionTransformer of the same shape holding our weights, eager float32: the baseline",
    "ours_eager": "our network, eager float32 (what evaluate runs)",
    "ours_bf16": "our network, eager under bfloat16 autocast (evaluate precision=bf16)",
    "ours_compile": "our network, torch.compile (Inductor, freezing), float32",
    "ours_onnx": "our ONNX export under onnxruntime (all graph optimisations), float32",
    "ours_onnx_int8": "that export with onnxruntime's dynamic int8 quantisation of the weights: quantised",
}
REFERENCE, BASELINE, CHUNK = "ours_eager", "timm_eager", 1000


def build(name: str, loaded, scratch: Path):
    """The variant as a function of a tensor of images -> class probabilities."""
    net, dtype = loaded.net.eval(), None
    if name == BASELINE:
        net = to_timm(net, loaded.net_config)
    elif name == "ours_bf16":
        dtype = torch.bfloat16
    elif name == "ours_compile":
        net = torch.compile(copy.deepcopy(net), dynamic=False, options={"freezing": True})
    elif name.startswith("ours_onnx"):
        onnx_file = scratch / "model.onnx"
        onnx_file.write_bytes(onnx_model(net, model_card(loaded), opset=18).SerializeToString())
        if name == "ours_onnx_int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(onnx_file), str(scratch / "int8.onnx"), weight_type=QuantType.QInt8)
            onnx_file = scratch / "int8.onnx"
        net = OnnxNet(onnx_session(onnx_file))
    predict = partial(predict_probs, net, device=torch.device("cpu"), dtype=dtype)
    pad = name == "ours_compile"  # one static shape per batch size: a short last batch is padded to it
    return lambda x, size: predict(x.split(size), pad_to=size if pad else None)[0]


def timed(predict, x: torch.Tensor, size: int) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    probs = predict(x, size)
    return time.perf_counter() - wall, time.process_time() - cpu, probs


def measure_inference(args, cfg: DictConfig) -> dict:
    """``--inference``: the checkpoint's network (or the recipe's, randomly initialised) on ``--data``'s test
    images (or random ones: speed only), at the evaluation's batch size (configs/eval.yaml)."""
    if args.ckpt:
        loaded = load_classifier(args.ckpt)
    else:
        torch.manual_seed(0)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        net = build_network(model).eval()
        loaded = LoadedClassifier(net=net, classes=[str(i) for i in range(net.num_classes)], net_config=model)
    batch = 8 if args.tiny else compose_config([], cfg.paths.output_dir, config_name="eval").batch_size
    if args.data:
        data = OmegaConf.to_container(cfg.data, resolve=True)
        datamodule = evaluation_datamodule(data, input_spec(loaded), 1000)
        datamodule.setup("test")
        x, labels = (torch.cat(t)[: args.images] for t in zip(*datamodule.test_dataloader(), strict=True))
    else:
        size, count = input_spec(loaded).image_size, args.images or (64 if args.tiny else 2000)
        x, labels = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0)), None
    singles = args.latency_images if args.latency_images is not None else (4 if args.tiny else 100)
    print(f"inference: {len(x):,} images, batch {batch} and 1, {torch.get_num_threads()} threads")
    built, skipped = {}, {}  # name: (predict, seconds to build and warm up); name: why not
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.variants or list(VARIANTS):
            tic = time.perf_counter()
            try:
                predict = build(name, loaded, Path(scratch))
                for size in (batch, 1):  # torch.compile compiles here, once per shape
                    timed(predict, x[:size], size)
            except Exception as err:  # a variant that cannot run is reported; the others still are
                skipped[name] = f"{type(err).__name__}: {first_line(err)[:300]}"
                print(f"  {name}: skipped ({skipped[name]})")
                continue
            built[name] = predict, round(time.perf_counter() - tic, 2)
        if REFERENCE not in built:
            raise VitCifarError(f"our network could not be run: {skipped[REFERENCE]}")
        names, chunks = list(built), {name: [] for name in built}  # (wall, cpu, probs) of each chunk
        for turn, start in enumerate(range(0, len(x), CHUNK)):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                chunks[name].append(timed(built[name][0], x[start : start + CHUNK], batch))
        latency = {name: [timed(built[name][0], one, 1)[0] for one in x[:singles].split(1)] for name in names}
    reference, results = torch.cat([p for *_, p in chunks[REFERENCE]]), {}
    for name in names:
        wall, cpu, probs = zip(*chunks[name], strict=True)
        p = torch.cat(probs)
        results[name] = {
            "what": VARIANTS[name],
            "build_and_warmup_s": built[name][1],
            "images_per_s": round(len(x) / sum(wall), 1),
            "images_per_cpu_s": round(len(x) / sum(cpu), 1),
            "chunks_s": [round(s, 3) for s in wall],
            "batch_1_ms_median": round(1000 * statistics.median(latency[name]), 3) if singles else None,
            "top1": None if labels is None else round(float((p.argmax(1) == labels).float().mean()), 4),
            "agreement_with_ours_eager": float((p.argmax(1) == reference.argmax(1)).float().mean()),
            "max_abs_diff_probs_vs_ours_eager": float((p - reference).abs().max()),
        }
    for r in results.values() if BASELINE in results else []:
        r["over_timm_eager"] = round(r["images_per_s"] / results[BASELINE]["images_per_s"], 3)
    report = {"eval_batch_size": batch, "results": results, "skipped": skipped, "images": len(x)}
    return report | {"weights": args.ckpt or "random init, seed 0"}
