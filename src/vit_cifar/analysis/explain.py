"""Attention maps and rollout of a checkpoint: ``python -m vit_cifar.visualize ckpt_path=<file> [overrides]``.

``visualize(cfg)`` is the whole job and returns what it wrote; ``main`` only adds Hydra and one-line errors.
Everything is checked and drawn before anything lands in ``output_dir``: a bad input writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_cifar.analysis.attention import check_options, explain
from vit_cifar.analysis.attention_plots import draw_group, write_index
from vit_cifar.analysis.picking import pick_groups
from vit_cifar.checkpoints.atomic import staged_results
from vit_cifar.checkpoints.loading import LoadedClassifier, beside_run, load_classifier, required_ckpt_path
from vit_cifar.config.entry import check_output_place
from vit_cifar.data.transforms import eval_transform
from vit_cifar.errors import CheckpointError, ConfigError, SkippedInputsError
from vit_cifar.inference.engine import input_spec, resolve_device

# What this command writes; a new run replaces exactly these in output_dir, and nothing else there.
OWN_FILES = ("index.md", "rollout_*.png", "sample_*.png", "misclassified_*.png", "input_*.png")


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
