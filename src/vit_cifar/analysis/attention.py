"""Attention maps and attention rollout, as pure functions on attention tensors; :func:`explain`, which runs
them over a batch of images through a ViT's explicit attention path; and the figures and index section that
show them (matplotlib's object API, no display needed).

Shapes: B images, H heads, N tokens (the CLS token first, then the patches in row-major order, as
``PatchEmbed`` flattens them), g the side of the patch grid (N = 1 + g * g).

Rollout follows Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers"; its gradient-weighted
variant, Chefer et al. (2021), "Transformer Interpretability Beyond Attention Visualization".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

HEAD_FUSIONS = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N): the mean, max or min over the heads."""
    return HEAD_FUSIONS[head_fusion](attn, dim=1)


def discard_lowest(attn: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the weakest ``discard_ratio`` of each row's links to the patches, (B, N, N) -> (B, N, N).

    The link to the CLS token (column 0) is never dropped. Unlike the common implementation, which ranks all
    N * N entries together, this ranks within each row: a token that attends diffusely keeps its strongest
    links instead of losing them all to sharper tokens. Rows no longer sum to 1; rollout renormalises them.
    """
    k = int((attn.shape[-1] - 1) * float(discard_ratio))  # of the N - 1 patch links
    if k == 0:
        return attn
    patches = attn[..., 1:]  # (B, N, N - 1)
    weakest = patches.topk(k, dim=-1, largest=False).indices  # (B, N, k)
    return torch.cat([attn[..., :1], patches.scatter(-1, weakest, 0.0)], dim=-1)


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    gradients: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rollout through the layers (first to last), each (B, H, N, N) -> (B, N, N): row i is how much token i's
    final representation draws on each input token. With ``gradients`` (of a class score, per layer), each
    head's attention is first replaced by the positive part of attention * gradient."""
    batch, _, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    rollout = eye.expand(batch, n, n)
    for i, attn in enumerate(attentions):
        if gradients is not None:
            attn = (attn * gradients[i]).clamp(min=0)  # (B, H, N, N): where attention raised the class score
        a = discard_lowest(fuse_heads(attn, head_fusion), discard_ratio) + eye  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)  # rows back to distributions
        rollout = a @ rollout  # this layer mixes what the earlier layers had mixed
    return rollout


def cls_patch_maps(attn: torch.Tensor, grid_size: int) -> torch.Tensor:
    """The CLS token's row over the patches as a grid: (..., N, N) -> (..., g, g), N = 1 + g * g; per-head
    attention (B, H, N, N) and a rollout (B, N, N) alike."""
    return attn[..., 0, 1:].reshape(*attn.shape[:-2], grid_size, grid_size)  # row-major, as PatchEmbed


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of patch-grid maps to image size: (..., g, g) -> (..., size, size)."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()  # (M, 1, g, g), as interpolate wants
    return F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False).view(
        *maps.shape[:-2], size, size
    )


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map (the last two dimensions) stretched to [0, 1]; a flat map becomes all zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny)


# ------------------------------------------------------------------------ the attention of images

BATCH = 64  # images explained per forward pass: attention maps are (B, heads, N, N) per layer


def explain(
    net: torch.nn.Module,
    x: torch.Tensor,
    layers: list[int],
    head_fusion: str,
    discard_ratio: float,
    grad_class: int | str | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Attention of normalised images ``x`` (K, 3, S, S), ``BATCH`` at a time, through the explicit path
    (``forward_with_attention``): predictions and their probabilities (K,), head maps per chosen layer
    (K, H, S, S), the rollout (K, S, S) and the gradient-weighted one (or None); maps in [0, 1]."""
    grid = net.patch_embed.grid_size
    to_image = lambda maps: scale_to_unit(upsample_maps(cls_patch_maps(maps, grid), x.shape[-1])).cpu()
    preds, probs, rollouts, grad_rollouts = [], [], [], []
    head_maps: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for chunk in x.split(BATCH):
        # The gradient-weighted rollout needs the graph; the plain one only reads the attention.
        with torch.set_grad_enabled(grad_class is not None):
            logits, attentions = net.forward_with_attention(chunk)  # attentions: depth x (B, H, N, N)
        p, pred = logits.detach().softmax(dim=-1).max(dim=-1)
        preds.append(pred)
        probs.append(p)
        for i in layers:
            head_maps[i].append(to_image(attentions[i].detach()))  # (B, H, S, S)
        plain = [a.detach() for a in attentions]
        rollouts.append(to_image(attention_rollout(plain, head_fusion, discard_ratio)))  # (B, S, S)
        if grad_class is not None:
            target = pred if grad_class == "predicted" else torch.full_like(pred, grad_class)
            score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for all
            gradients = torch.autograd.grad(score, attentions)
            grad_rollouts.append(to_image(attention_rollout(plain, head_fusion, discard_ratio, gradients)))
    head_maps = {i: torch.cat(maps) for i, maps in head_maps.items()}
    grad_rollout = torch.cat(grad_rollouts) if grad_rollouts else None
    return torch.cat(preds), torch.cat(probs), head_maps, torch.cat(rollouts), grad_rollout


# ------------------------------------------------------------------------ figures and the index

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


def draw_group(group: Group, explained: tuple, classes: list[str], grad_class, folder: Path) -> list[str]:
    """One figure per image and an overview of the rollouts, into ``folder``, from what :func:`explain` found;
    returns the group's part of index.md: the overview, a table of predictions and each figure."""
    preds, probs, head_maps, rollout, grad_rollout = explained
    lines = [
        f"![{group.title}: rollout overview]({group.overview})",
        "",
        "| # | image | true | predicted | p | figure |",
        "|---|---|---|---|---|---|",
    ]
    figures, short = [], []
    for i, (name, source, label) in enumerate(zip(group.names, group.sources, group.labels, strict=True)):
        true = classes[label] if label is not None else None
        predicted, prob = classes[preds[i]], float(probs[i])
        # The caption: "cat -> dog (p 0.61)", or "predicted dog (p 0.61)" for an image without a label.
        verdict = f"{predicted} (p {prob:.2f})"
        verdict = f"{true} -> {verdict}" if true is not None else f"predicted {verdict}"
        grad = grad_rollout[i] if grad_rollout is not None else None
        toward = preds[i] if grad_class == "predicted" else grad_class
        grad_title = f"toward {classes[toward]}" if grad is not None else ""
        layer_maps = {layer: maps[i] for layer, maps in head_maps.items()}
        fig = attention_figure(
            group.images[i], layer_maps, rollout[i], f"{source}: {verdict}", grad, grad_title
        )
        fig.savefig(folder / f"{name}.png", dpi=100)
        lines.append(
            f"| {i + 1} | {source} | {true or '-'} | {predicted} | {prob:.2f} | [{name}.png]({name}.png) |"
        )
        figures += [f"### {i + 1}. {source}: {verdict}", "", f"![{source}: {verdict}]({name}.png)", ""]
        short.append(verdict.replace(" (p", "\n(p"))  # two lines: long names fit narrow panels
    fig = rollout_overview(group.images, rollout, short, f"{group.title}: attention rollout")
    fig.savefig(folder / group.overview, dpi=100)
    return [*lines, "", *figures]
