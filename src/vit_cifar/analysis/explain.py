"""Attention maps and rollout of a checkpoint: ``python -m vit_cifar.visualize``'s job, :func:`visualize`. The
images explained are, by section, the user's files, or test images drawn at random with a seed and misclassified
ones from the same draw; all is checked and drawn before anything lands in ``output_dir``."""

from __future__ import annotations

import re
import sys

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_cifar.analysis.attention import HEAD_FUSIONS, Group, draw_group, explain
from vit_cifar.analysis.evaluation import evaluation_data
from vit_cifar.checkpoints.atomic import staged_results
from vit_cifar.checkpoints.loading import LoadedClassifier, beside_run, load_classifier, required_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.data.sources import collect_image_files, decode_image
from vit_cifar.data.transforms import eval_transform
from vit_cifar.errors import (
    COUNT,
    OPEN_PROBABILITY,
    CheckpointError,
    Choice,
    ConfigError,
    DataError,
    Number,
    SkippedInputsError,
    check,
    first_line,
)
from vit_cifar.inference.engine import input_spec, resolve_device

# What this command writes; a new run replaces exactly these in output_dir, and nothing else there.
OWN_FILES = ("index.md", "rollout_*.png", "sample_*.png", "misclassified_*.png", "input_*.png")
# The command's own values, checked once before any work (the layers and the class once the model is known).
RULES = {
    "head_fusion": Choice(tuple(HEAD_FUSIONS)),
    "discard_ratio": OPEN_PROBABILITY,  # the share of each token's weakest links to drop
    "num_images": COUNT,
    "num_misclassified": COUNT,
    "seed": COUNT,
}


def resolve_layers(layers, depth: int) -> list[int]:
    """Block indices to show: null -> first, middle, last; negatives count from the end; sorted, unique."""
    if layers is None:
        return sorted({0, (depth - 1) // 2, depth - 1})
    raw = list(layers) if isinstance(layers, ListConfig | list | tuple) else [layers]
    if not raw:
        raise ConfigError("layers=[] names no block: leave it out for first, middle and last, or list some")
    block = Number(low=-depth, high=depth - 1, integer=True, hint=f"a block of this {depth}-block model")
    for layer in raw:
        check("layers", layer, block)
    return sorted({int(layer) % depth for layer in raw})


def resolve_class(choice, classes: list[str]) -> int | str | None:
    """grad_rollout_class -> None (off), "predicted", or a class index."""
    names = Choice(("predicted", *classes, *range(len(classes))), optional=True, hint="a class name or index")
    check("grad_rollout_class", choice, names)
    return classes.index(choice) if choice in classes else choice


def pick_inputs(inputs, limit: int, image_size: int) -> tuple[Group, list[tuple[str, str]]]:
    """The first ``limit`` images of ``inputs`` (files, folders searched recursively), decoded and resized to
    the model's input size, and the (path, why) of those that could not be read."""
    files, problems = collect_image_files(inputs)
    if problems:  # what to explain is chosen by the user, so a wrong name is a setting to fix
        name, why = problems[0]
        raise ConfigError(f"inputs: {name}: {why}: pass image files or folders of them")
    if len(files) > limit:
        print(f"inputs: explaining the first {limit} of {len(files)} images (raise num_images for more)")
        files = files[:limit]
    # The data sources' decoder: RGB, resized to the model's input. As predict does, an unreadable file is
    # skipped and reported, and the others are still explained.
    arrays, readable, skipped = [], [], []
    for f in files:
        try:
            arrays.append(decode_image(f.read_bytes(), image_size, str(f)))  # (S, S, 3) uint8
            readable.append(f)
        except (DataError, OSError) as err:
            skipped.append((str(f), first_line(err)))
    if not readable:
        raise DataError(
            f"none of the {len(files)} inputs could be read (first: {skipped[0][0]}: {skipped[0][1]}): "
            "pass image files (png, jpg, ...)"
        )
    note = f"{len(readable)} images given by inputs, titled with their paths."
    if skipped:
        note += f" Skipped as unreadable: {', '.join(path for path, _ in skipped)}."
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (K, 3, S, S)
    stem = lambda f: re.sub(r"[^A-Za-z0-9_.-]", "_", f.stem)[:40]  # a name any file system takes
    names = [f"input_{i + 1:02d}_{stem(f)}" for i, f in enumerate(readable)]
    sources = [str(f) for f in readable]
    return Group(
        "Your images", note, "rollout_inputs.png", images, names, sources, [None] * len(readable)
    ), skipped


def pick_test_images(cfg: DictConfig, loaded: LoadedClassifier, normalise, device) -> tuple[list[Group], str]:
    """The seeded sample of test images and the misclassified ones, by section, and a line on the data."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    eval_batch = int(cfg.data.get("eval_batch_size", 512))
    datamodule, _ = evaluation_data(data_cfg, loaded, eval_batch)
    images, labels = datamodule.test_set.images, datamodule.test_set.labels  # at the model's input size

    def group(title: str, note: str, overview: str, indices: list[int], prefix: str) -> Group:
        names = [f"{prefix}_{k + 1:02d}_test{i}" for k, i in enumerate(indices)]
        sources = [f"test image {i}" for i in indices]
        return Group(
            title, note, overview, images[indices], names, sources, [int(labels[i]) for i in indices]
        )

    # One seeded permutation serves both sections: its first images, and its first misclassified images.
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    groups = []
    if cfg.num_images:
        chosen = [int(i) for i in order[: cfg.num_images]]
        note = f"{len(chosen)} test images drawn at random (seed {cfg.seed})."
        groups.append(group("Test images", note, "rollout_samples.png", chosen, "sample"))
    if cfg.num_misclassified:
        # The first errors after the samples in the same permutation (a random sample of the errors, and no
        # image in both sections), through the fused forward; batches grow so that a good model is not run on
        # the whole test set.
        wrong, start, batch = [], cfg.num_images, 64
        while len(wrong) < cfg.num_misclassified and start < len(order):
            idx = order[start : start + batch]
            with torch.inference_mode():
                preds = loaded.net(normalise(images[idx]).to(device)).argmax(dim=1).cpu()
            wrong += [int(i) for i, p in zip(idx, preds, strict=True) if p != labels[i]]
            start, batch = start + batch, min(batch * 2, eval_batch)
        wrong = wrong[: cfg.num_misclassified]
        note = f"{len(wrong)} misclassified test images drawn at random (seed {cfg.seed}), titled true -> predicted."
        note = note if wrong else f"No test image is misclassified (of {len(labels)})."
        groups.append(
            group("Misclassified test images", note, "rollout_misclassified.png", wrong, "misclassified")
        )
    return groups, f"{datamodule.description}, {len(labels)} test images"


def visualize(cfg: DictConfig) -> dict:
    """Check everything, explain the chosen images, draw into a staging folder, then publish to output_dir."""
    ckpt_path = required_ckpt_path(cfg)
    for key, rule in RULES.items():
        check(key, cfg[key], rule)
    head_fusion, discard_ratio = cfg.head_fusion, float(cfg.discard_ratio)
    if cfg.inputs and cfg.num_images == 0:
        raise ConfigError("num_images=0 leaves none of the inputs to explain: set it to 1 or more")
    if not cfg.inputs and cfg.num_images + cfg.num_misclassified == 0:
        raise ConfigError("num_images=0 and num_misclassified=0 leave nothing to explain: set one above 0")
    output_dir = check_output_place(
        cfg.output_dir or beside_run(ckpt_path, "attention"), "output_dir", folder=True
    )
    device = resolve_device(str(cfg.device))
    loaded = load_classifier(ckpt_path)
    net = loaded.net.to(device)
    if not hasattr(net, "forward_with_attention"):
        raise CheckpointError(
            f"checkpoint {ckpt_path} holds a {type(net).__name__}, which has no attention to show: "
            "use a checkpoint of a vit_cifar.models.VisionTransformer"
        )
    depth, heads = len(net.blocks), net.blocks[0].attn.num_heads
    grid, image_size = net.patch_embed.grid_size, net.patch_embed.img_size  # the model's input size
    layers = resolve_layers(cfg.layers, depth)
    grad_class = resolve_class(cfg.grad_rollout_class, loaded.classes)
    # The normalisation the checkpoint was trained with, as predict and evaluate use.
    spec = input_spec(loaded)
    normalise = eval_transform(spec.mean, spec.std)
    if cfg.inputs:
        group, skipped = pick_inputs(cfg.inputs, cfg.num_images, image_size)
        groups, data_note = [group], group.note
    else:
        groups, data_note = pick_test_images(cfg, loaded, normalise, device)
        skipped = []

    after = f" (after epoch {loaded.epoch})" if loaded.epoch else ""
    grad_note = f"; gradient-weighted rollout toward {cfg.grad_rollout_class}" * (grad_class is not None)
    index = [
        f"""# Attention of {loaded.path.name}

- checkpoint: `{loaded.path}`{after}: {type(net).__name__}, {depth} blocks of {heads} heads, patch grid \
{grid}x{grid} on {image_size}x{image_size} images
- images: {data_note}
- head maps: the CLS token's attention to each patch in layers {", ".join(map(str, layers))} (0-based), \
upsampled bilinearly to the image
- rollout (Abnar & Zuidema 2020) through all {depth} layers: head fusion {head_fusion}, discard ratio \
{discard_ratio}{grad_note}
- every map is scaled to its own min..max (blue weak, red strong)
"""
    ]
    # Drawn beside output_dir first, so that a failure leaves output_dir as it was.
    with staged_results(output_dir, OWN_FILES) as staging:
        for group in groups:
            index += [f"## {group.title}", "", group.note, ""]
            if group.names:
                x = normalise(group.images).to(device)  # as the checkpoint was trained
                explained = explain(net, x, layers, head_fusion, discard_ratio, grad_class)
                index += draw_group(group, explained, loaded.classes, grad_class, staging)
        (staging / "index.md").write_text("\n".join(index))
        written = [output_dir / f.name for f in sorted(staging.iterdir())]
    figures = [p for p in written if p.suffix == ".png"]
    counts = ", ".join(f"{len(g.names)} {g.title.lower()}" for g in groups)
    print(f"wrote {len(figures)} figures and index.md to {output_dir} ({counts})")
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if skipped:
        explained = len(groups[0].names)
        raise SkippedInputsError(
            f"{len(skipped)} of {len(skipped) + explained} inputs skipped (unreadable, listed above); "
            f"the other {explained} were explained in {output_dir}"
        )
    return {"output_dir": str(output_dir), "files": [str(p) for p in written]}
