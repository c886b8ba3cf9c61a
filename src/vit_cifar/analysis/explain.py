"""Attention maps and rollout of a checkpoint: ``python -m vit_cifar.visualize ckpt_path=<file> [overrides]``.

``visualize(cfg)`` is the whole job and returns what it wrote; ``main`` only adds Hydra and one-line errors.
Everything is checked and drawn before anything lands in ``output_dir``: a bad input writes nothing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_cifar.analysis.attention import (
    attention_and_gradients,
    attention_rollout,
    check_options,
    cls_patch_maps,
    scale_to_unit,
    upsample_maps,
)
from vit_cifar.analysis.attention_plots import attention_figure, rollout_overview, save_figure
from vit_cifar.checkpoints.atomic import check_output_place, staged_results
from vit_cifar.checkpoints.loading import LoadedClassifier, beside_run, load_classifier, required_ckpt_path
from vit_cifar.data.sources import collect_image_files, decode_image
from vit_cifar.data.transforms import eval_transform
from vit_cifar.errors import CheckpointError, ConfigError, DataError, SkippedInputsError, first_line
from vit_cifar.inference.engine import input_spec, resolve_device

# What this command writes; a new run replaces exactly these in output_dir, and nothing else there.
OWN_FILES = ("index.md", "rollout_*.png", "sample_*.png", "misclassified_*.png", "input_*.png")
BATCH = 64  # images explained per forward pass: attention maps are (B, heads, N, N) per layer
Normalise = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> the network's normalised input


@dataclass
class Picked:
    """Images to explain, uint8 (K, 3, S, S), with where each came from and its true label when known."""

    images: torch.Tensor
    names: list[str]  # file stems for the figures
    sources: list[str]  # "test image 1234" or the file path
    labels: list[int | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of unreadable inputs


def load_vit(path: str | Path) -> LoadedClassifier:
    """``load_classifier``, and a one-line error for a network without the explicit attention path."""
    loaded = load_classifier(path)
    if not hasattr(loaded.net, "forward_with_attention"):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(loaded.net).__name__}, which has no attention to show: "
            "use a checkpoint of a vit_cifar.models.VisionTransformer"
        )
    return loaded


def resolve_layers(layers, depth: int) -> list[int]:
    """Block indices to show: null -> first, middle, last; negatives count from the end; sorted, unique."""
    if layers is None:
        return sorted({0, (depth - 1) // 2, depth - 1})
    raw = OmegaConf.to_container(layers) if isinstance(layers, ListConfig) else layers
    raw = raw if isinstance(raw, list | tuple) else [raw]
    out = set()
    for layer in raw:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise ConfigError(
                f"layers={raw} has {layer!r}, not a block of this {depth}-block model: "
                f"use indices 0..{depth - 1} (negative counts from the end), e.g. layers=[0,-1]"
            )
        out.add(layer % depth)
    if not out:
        raise ConfigError("layers=[] names no block: leave it out for first, middle and last, or list some")
    return sorted(out)


def resolve_class(choice, classes: list[str]) -> int | str | None:
    """grad_rollout_class -> None (off), "predicted", or a class index."""
    if choice is None or choice == "predicted":
        return choice
    if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(classes):
        return choice
    if isinstance(choice, str) and choice in classes:
        return classes.index(choice)
    raise ConfigError(
        f"grad_rollout_class={choice} is not a class of this checkpoint: use predicted, an index "
        f"0..{len(classes) - 1} or a name ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
    )


def _count(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={value} must be a whole number, 0 or more")
    return value


# ------------------------------------------------------------------------------------------------ images


def input_files(inputs) -> list[Path]:
    """The image files named by ``inputs`` (files, folders searched recursively), in a stable order; every
    name must give some (what to explain is chosen by the user, so a wrong name is a setting to fix)."""
    raw = OmegaConf.to_container(inputs) if isinstance(inputs, ListConfig) else inputs
    files, problems = collect_image_files(raw)
    if problems:
        name, why = problems[0]
        raise ConfigError(f"inputs: {name}: {why}: pass image files or folders of them")
    return files


def pick_inputs(inputs, limit: int, image_size: int) -> Picked:
    """The first ``limit`` images of ``inputs``, decoded and resized to the model's input size."""
    files = input_files(inputs)
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
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (K, 3, S, S)
    names = [
        f"input_{i + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', f.stem)[:40]}" for i, f in enumerate(readable)
    ]
    return Picked(images, names, [str(f) for f in readable], [None] * len(readable), skipped)


def load_test_set(
    cfg: DictConfig, loaded: LoadedClassifier, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The test images (uint8 (N, 3, S, S)) and labels of the data group, checked against the checkpoint."""
    datamodule = hydra.utils.instantiate(cfg.data, image_size=image_size, _convert_="all")
    datamodule.setup("test")
    classes = list(datamodule.classes)
    if classes != loaded.classes:
        raise DataError(
            f"the test data ({datamodule.description}) has classes {classes[:10]}, but checkpoint "
            f"{loaded.path} was trained on {loaded.classes[:10]}: pass the data.* settings of its training"
        )
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise DataError(
            f"the test images are {images.shape[-1]}x{images.shape[-2]} but the checkpoint's model takes "
            f"{image_size}x{image_size}: use data of that size"
        )
    return images, labels, datamodule.description


@torch.inference_mode()
def find_misclassified(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: np.ndarray,
    wanted: int,
    normalise: Normalise,
    device: torch.device,
    max_batch: int,
) -> list[int]:
    """The first ``wanted`` misclassified images in ``order`` (a seeded permutation: a random sample of the
    errors), through the fused forward; batches grow so that a good model is not run on the whole test set."""
    found: list[int] = []
    start, batch = 0, 64
    while len(found) < wanted and start < len(order):
        idx = order[start : start + batch]
        preds = net(normalise(images[idx]).to(device)).argmax(dim=1).cpu()
        found += [int(i) for i, p in zip(idx, preds, strict=True) if p != labels[i]]
        start, batch = start + batch, min(batch * 2, max_batch)
    return found[:wanted]


def _picked_from_test(images: torch.Tensor, labels: torch.Tensor, indices: list[int], prefix: str) -> Picked:
    return Picked(
        images=images[indices],
        names=[f"{prefix}_{k + 1:02d}_test{i}" for k, i in enumerate(indices)],
        sources=[f"test image {i}" for i in indices],
        labels=[int(labels[i]) for i in indices],
    )


# ------------------------------------------------------------------------------------------------ explain


@dataclass
class Explanation:
    """Per image: prediction, per-layer head maps (H, S, S) and rollout maps (S, S), all in [0, 1]."""

    preds: list[int]
    probs: list[float]
    head_maps: list[dict[int, torch.Tensor]]
    rollout: torch.Tensor  # (K, S, S)
    grad_rollout: torch.Tensor | None  # (K, S, S)
    grad_targets: list[int] | None


def explain(
    net: torch.nn.Module,
    x: torch.Tensor,
    layers: list[int],
    head_fusion: str,
    discard_ratio: float,
    grad_class: int | str | None,
) -> Explanation:
    """Attention of normalised images ``x`` (K, 3, S, S), ``BATCH`` at a time, through the explicit path."""
    grid = net.patch_embed.grid_size
    to_image = lambda maps: scale_to_unit(upsample_maps(maps, x.shape[-1]))  # (..., g, g) -> (..., S, S)
    preds, probs, head_maps, rollouts, grad_rollouts, targets = [], [], [], [], [], []
    for chunk in x.split(BATCH):
        with torch.no_grad():
            logits, attentions = net.forward_with_attention(chunk)  # attentions: depth x (B, H, N, N)
        p = logits.softmax(dim=-1)
        pred = p.argmax(dim=-1)
        preds += pred.tolist()
        probs += p.gather(1, pred[:, None]).squeeze(1).tolist()
        # per layer (B, H, N, N) -> (B, H, g, g) -> (B, H, S, S)
        per_layer = {i: to_image(cls_patch_maps(attentions[i], grid)) for i in layers}
        head_maps += [{i: maps[b].cpu() for i, maps in per_layer.items()} for b in range(len(chunk))]
        rollout = attention_rollout(attentions, head_fusion, discard_ratio)  # (B, N, N)
        rollouts.append(to_image(cls_patch_maps(rollout, grid)).cpu())  # (B, S, S)
        if grad_class is not None:
            target = pred if grad_class == "predicted" else torch.full_like(pred, grad_class)
            _, attentions, gradients = attention_and_gradients(net, chunk, target)
            weighted = attention_rollout(attentions, head_fusion, discard_ratio, gradients=gradients)
            grad_rollouts.append(to_image(cls_patch_maps(weighted, grid)).cpu())
            targets += target.tolist()
    grad_rollout = torch.cat(grad_rollouts) if grad_rollouts else None
    return Explanation(preds, probs, head_maps, torch.cat(rollouts), grad_rollout, targets or None)


# ------------------------------------------------------------------------------------------------ writing


@dataclass
class Group:
    """A section of the index: images explained together, with an overview figure of their rollouts."""

    title: str
    note: str
    overview: str  # file name of the overview figure
    picked: Picked


@dataclass
class Drawn:
    """One image's figure, as the index lists it."""

    file: str
    source: str
    true: str | None
    predicted: str
    prob: float

    @property
    def verdict(self) -> str:
        """The caption: "cat -> dog (p 0.61)", or "predicted dog (p 0.61)" for an image without a label."""
        pred = f"{self.predicted} (p {self.prob:.2f})"
        return f"{self.true} -> {pred}" if self.true is not None else f"predicted {pred}"


def draw_group(group: Group, ex: Explanation, classes: list[str], folder: Path) -> list[Drawn]:
    """One figure per image and an overview of the rollouts, into ``folder``."""
    picked, drawn = group.picked, []
    for i, name in enumerate(picked.names):
        label = picked.labels[i]
        d = Drawn(
            f"{name}.png",
            picked.sources[i],
            classes[label] if label is not None else None,
            classes[ex.preds[i]],
            ex.probs[i],
        )
        grad = ex.grad_rollout[i] if ex.grad_rollout is not None else None
        grad_title = f"toward {classes[ex.grad_targets[i]]}" if ex.grad_targets else ""
        fig = attention_figure(
            picked.images[i], ex.head_maps[i], ex.rollout[i], f"{d.source}: {d.verdict}", grad, grad_title
        )
        save_figure(fig, folder / d.file)
        drawn.append(d)
    short = [d.verdict.replace(" (p", "\n(p") for d in drawn]  # two lines: long names fit narrow panels
    fig = rollout_overview(picked.images, ex.rollout, short, f"{group.title}: attention rollout")
    save_figure(fig, folder / group.overview)
    return drawn


def write_index(folder: Path, header: list[str], sections: list[tuple[Group, list[Drawn]]]) -> None:
    """index.md: the settings, then per section its overview, a table of predictions and each figure."""
    lines = [*header, ""]
    for group, drawn in sections:
        lines += [f"## {group.title}", "", group.note, ""]
        if not drawn:
            continue
        lines += [
            f"![{group.title}: rollout overview]({group.overview})",
            "",
            "| # | image | true | predicted | p | figure |",
            "|---|---|---|---|---|---|",
        ]
        for k, d in enumerate(drawn, 1):
            row = [str(k), d.source, d.true or "-", d.predicted, f"{d.prob:.2f}", f"[{d.file}]({d.file})"]
            lines.append(f"| {' | '.join(row)} |")
        lines.append("")
        for k, d in enumerate(drawn, 1):
            lines += [f"### {k}. {d.source}: {d.verdict}", "", f"![{d.source}: {d.verdict}]({d.file})", ""]
    (folder / "index.md").write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------ the job


def pick_groups(
    cfg: DictConfig, loaded: LoadedClassifier, image_size: int, normalise: Normalise, device: torch.device
) -> tuple[list[Group], str]:
    """The images to explain, by section, and a line on where they come from."""
    num_images, num_wrong = _count(cfg, "num_images"), _count(cfg, "num_misclassified")
    if cfg.get("inputs"):
        if num_images == 0:
            raise ConfigError("num_images=0 leaves none of the inputs to explain: set it to 1 or more")
        picked = pick_inputs(cfg.inputs, num_images, image_size)
        note = f"{len(picked.names)} images given by inputs, titled with their paths."
        if picked.skipped:
            note += f" Skipped as unreadable: {', '.join(path for path, _ in picked.skipped)}."
        return [Group("Your images", note, "rollout_inputs.png", picked)], note
    if num_images + num_wrong == 0:
        raise ConfigError("num_images=0 and num_misclassified=0 leave nothing to explain: set one above 0")
    images, labels, description = load_test_set(cfg, loaded, image_size)
    # One seeded permutation serves both sections: its first images, and its first misclassified images.
    order = np.random.default_rng(int(cfg.seed)).permutation(len(labels))
    groups = []
    if num_images:
        chosen = [int(i) for i in order[:num_images]]
        note = f"{len(chosen)} test images drawn at random (seed {cfg.seed})."
        groups.append(
            Group(
                "Test images",
                note,
                "rollout_samples.png",
                _picked_from_test(images, labels, chosen, "sample"),
            )
        )
    if num_wrong:
        # Drawn after the samples in the same permutation, so that no image appears in both sections.
        wrong = find_misclassified(
            loaded.net,
            images,
            labels,
            order[num_images:],
            num_wrong,
            normalise,
            device,
            int(cfg.data.get("eval_batch_size", 512)),
        )
        note = (
            f"{len(wrong)} misclassified test images drawn at random (seed {cfg.seed}), titled true -> "
            "predicted."
            if wrong
            else f"No test image is misclassified (of {len(labels)})."
        )
        groups.append(
            Group(
                "Misclassified test images",
                note,
                "rollout_misclassified.png",
                _picked_from_test(images, labels, wrong, "misclassified"),
            )
        )
    return groups, f"{description}, {len(labels)} test images"


def visualize(cfg: DictConfig) -> dict:
    """Check everything, explain the chosen images, draw into a staging folder, then publish to output_dir."""
    ckpt_path = required_ckpt_path(cfg)
    head_fusion, discard_ratio = str(cfg.head_fusion), float(cfg.discard_ratio)
    check_options(head_fusion, discard_ratio)
    output_dir = check_output_place(
        cfg.output_dir or beside_run(ckpt_path, "attention"), "output_dir", folder=True
    )
    device = resolve_device(str(cfg.device))
    loaded = load_vit(ckpt_path)
    net = loaded.net.to(device)
    depth, heads = len(net.blocks), net.blocks[0].attn.num_heads
    grid = net.patch_embed.grid_size
    image_size = net.patch_embed.img_size  # the model's input size
    layers = resolve_layers(cfg.layers, depth)
    grad_class = resolve_class(cfg.grad_rollout_class, loaded.classes)
    spec = input_spec(
        loaded
    )  # the normalisation the checkpoint was trained with, as predict and evaluate use
    normalise = eval_transform(spec.mean, spec.std)
    groups, data_note = pick_groups(cfg, loaded, image_size, normalise, device)

    # Drawn beside output_dir first, so that a failure leaves output_dir as it was.
    with staged_results(output_dir, OWN_FILES) as staging:
        sections = []
        for group in groups:
            drawn = []
            if group.picked.names:
                x = normalise(group.picked.images).to(device)  # as the checkpoint was trained
                ex = explain(net, x, layers, head_fusion, discard_ratio, grad_class)
                drawn = draw_group(group, ex, loaded.classes, staging)
            sections.append((group, drawn))
        after = f" (after epoch {loaded.epoch})" if loaded.epoch else ""
        grad_note = f"; gradient-weighted rollout toward {cfg.grad_rollout_class}" * (grad_class is not None)
        header = [
            f"# Attention of {loaded.path.name}",
            "",
            f"- checkpoint: `{loaded.path}`{after}: {type(net).__name__}, {depth} blocks of {heads} heads, "
            f"patch grid {grid}x{grid} on {image_size}x{image_size} images",
            f"- images: {data_note}",
            f"- head maps: the CLS token's attention to each patch in layers {', '.join(map(str, layers))} "
            "(0-based), upsampled bilinearly to the image",
            f"- rollout (Abnar & Zuidema 2020) through all {depth} layers: head fusion {head_fusion}, "
            f"discard ratio {discard_ratio}{grad_note}",
            "- every map is scaled to its own min..max (blue weak, red strong)",
        ]
        write_index(staging, header, sections)
        written = [output_dir / f.name for f in sorted(staging.iterdir())]
    figures = [p for p in written if p.suffix == ".png"]
    counts = ", ".join(f"{len(g.picked.names)} {g.title.lower()}" for g in groups)
    print(f"wrote {len(figures)} figures and index.md to {output_dir} ({counts})")
    skipped = [s for g in groups for s in g.picked.skipped]
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if skipped:
        explained = sum(len(g.picked.names) for g in groups)
        raise SkippedInputsError(
            f"{len(skipped)} of {len(skipped) + explained} inputs skipped (unreadable, listed above); "
            f"the other {explained} were explained in {output_dir}"
        )
    return {"output_dir": str(output_dir), "files": [str(p) for p in written]}
