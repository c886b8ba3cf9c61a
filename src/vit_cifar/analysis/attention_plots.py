"""Figures of attention maps and rollout over the images they explain (matplotlib, no display needed), and
the index page that lists them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vit_cifar.analysis.attention import Explanation

CMAP = "jet"  # the usual choice for attention heat maps: weak -> blue, strong -> red
ALPHA = 0.5  # heat map opacity over the image
PANEL_INCHES = 1.6
SCALE_NOTE = "each map scaled to its own min..max"


def _colour_bar(fig: Figure, axes) -> None:
    """The heat maps' scale: each map runs from its own weakest (0) to its strongest (1) attention."""
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=CMAP), ax=axes, shrink=0.7, aspect=25)
    bar.set_label("attention, scaled per map", fontsize=8)
    bar.set_ticks([0.0, 0.5, 1.0], labels=["weakest", "", "strongest"])
    bar.ax.tick_params(labelsize=7)


def _overlay(ax, image: torch.Tensor, heat: torch.Tensor | None, title: str) -> None:
    """The uint8 (3, S, S) image, under the heat map (S, S) in [0, 1] when there is one."""
    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    if heat is not None:
        ax.imshow(heat.cpu().numpy(), cmap=CMAP, alpha=ALPHA, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def attention_figure(
    image: torch.Tensor,
    head_maps: dict[int, torch.Tensor],
    rollout: torch.Tensor,
    title: str,
    grad_rollout: torch.Tensor | None = None,
    grad_title: str = "",
) -> Figure:
    """One image explained: a row per chosen layer (the image, then each head's CLS->patch map, (H, S, S)) and
    a last row with the rollout (and the gradient-weighted rollout when given)."""
    heads = next(iter(head_maps.values())).shape[0]
    cols = 1 + max(heads, 2 if grad_rollout is not None else 1)
    rows = len(head_maps) + 1
    fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (layer, maps) in enumerate(head_maps.items()):
        _overlay(axes[r, 0], image, None, f"layer {layer}")
        for h in range(maps.shape[0]):
            _overlay(axes[r, 1 + h], image, maps[h], f"layer {layer}, head {h}")
    _overlay(axes[-1, 0], image, None, "image")
    _overlay(axes[-1, 1], image, rollout, "rollout")
    if grad_rollout is not None:
        _overlay(axes[-1, 2], image, grad_rollout, grad_title)
    _colour_bar(fig, axes)
    fig.suptitle(f"{title}\nCLS attention to the patches; {SCALE_NOTE}", fontsize=9)
    return fig


def rollout_overview(images: torch.Tensor, rollouts: torch.Tensor, titles: list[str], heading: str) -> Figure:
    """Many images at a glance, each above its rollout overlay: images (K, 3, S, S), rollouts (K, S, S)."""
    k = len(images)
    fig = Figure(figsize=(PANEL_INCHES * k, PANEL_INCHES * 2 + 0.8), layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    for i in range(k):
        _overlay(axes[0, i], images[i], None, titles[i])
        _overlay(axes[1, i], images[i], rollouts[i], "rollout")
    _colour_bar(fig, axes)
    fig.suptitle(f"{heading}\n{SCALE_NOTE}", fontsize=9)
    return fig


@dataclass
class Group:
    """A section of the index: images (uint8 (K, 3, S, S)) explained together, each with its figure's name,
    where it came from and its true label when known, and an overview figure of their rollouts."""

    title: str
    note: str
    overview: str  # file name of the overview figure
    images: torch.Tensor
    names: list[str]
    sources: list[str]  # "test image 1234" or the file path
    labels: list[int | None]


def draw_group(group: Group, ex: Explanation, classes: list[str], folder: Path) -> list[str]:
    """One figure per image and an overview of the rollouts, into ``folder``; returns the group's part of
    index.md: the overview, a table of predictions and each figure."""
    lines = [
        f"![{group.title}: rollout overview]({group.overview})",
        "",
        "| # | image | true | predicted | p | figure |",
        "|---|---|---|---|---|---|",
    ]
    figures, short = [], []
    for i, (name, source, label) in enumerate(zip(group.names, group.sources, group.labels, strict=True)):
        true = classes[label] if label is not None else None
        predicted, prob = classes[ex.preds[i]], float(ex.probs[i])
        # The caption: "cat -> dog (p 0.61)", or "predicted dog (p 0.61)" for an image without a label.
        verdict = f"{predicted} (p {prob:.2f})"
        verdict = f"{true} -> {verdict}" if true is not None else f"predicted {verdict}"
        grad = ex.grad_rollout[i] if ex.grad_rollout is not None else None
        grad_title = f"toward {classes[ex.grad_targets[i]]}" if ex.grad_targets is not None else ""
        head_maps = {layer: maps[i] for layer, maps in ex.head_maps.items()}
        fig = attention_figure(
            group.images[i], head_maps, ex.rollout[i], f"{source}: {verdict}", grad, grad_title
        )
        fig.savefig(folder / f"{name}.png", dpi=100)
        lines.append(
            f"| {i + 1} | {source} | {true or '-'} | {predicted} | {prob:.2f} | [{name}.png]({name}.png) |"
        )
        figures += [f"### {i + 1}. {source}: {verdict}", "", f"![{source}: {verdict}]({name}.png)", ""]
        short.append(verdict.replace(" (p", "\n(p"))  # two lines: long names fit narrow panels
    fig = rollout_overview(group.images, ex.rollout, short, f"{group.title}: attention rollout")
    fig.savefig(folder / group.overview, dpi=100)
    return [*lines, "", *figures]
