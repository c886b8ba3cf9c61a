"""The evaluation figures, each drawn from plain numbers with matplotlib's object API (no pyplot state, no
display) and saved to ``path`` as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vit_cifar.analysis.report import pct

DPI = 110
GREEN, ORANGE, RED, BLUE, GREY = "#2ca02c", "#ff7f0e", "#d62728", "#1f77b4", "#7f7f7f"
# A class is "near" the model's overall accuracy within this many points; beyond, it is above or below it.
NEAR_OVERALL = 0.05


def accuracy_colour(accuracy: float, overall: float) -> str:
    """A class's colour relative to the model's own overall accuracy (not fixed bands, which would paint every
    bar of a weak model red and every bar of a strong one green): green above, red below, blue near it."""
    if accuracy > overall + NEAR_OVERALL:
        return GREEN
    return RED if accuracy < overall - NEAR_OVERALL else BLUE


def _save(fig: Figure, path: Path) -> Figure:
    # bbox_inches="tight": nothing clipped at the edges (the confusion matrix lost its y label and "automobile")
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight", pad_inches=0.15)
    return fig  # for the tests, which read the drawn texts


def per_class_accuracy(
    classes: Sequence[str], accuracies: Sequence[float], overall: float, path: Path
) -> Figure:
    fig = Figure(figsize=(max(8, 0.8 * len(classes)), 5), layout="constrained")
    ax = fig.subplots()
    values = [100 * a for a in accuracies]
    colours = [accuracy_colour(a, overall) for a in accuracies]
    # The overall line sits behind the bars and each value inside its bar's top, so the line never crosses
    # a value; a bar too short to hold its value gets it just above.
    ax.axhline(100 * overall, color="black", linestyle="--", linewidth=1, zorder=0)
    bars = ax.bar(classes, values, color=colours, edgecolor="black", linewidth=0.5, zorder=1)
    ax.bar_label(
        bars, [f"{v:.1f}" if v >= 12 else "" for v in values], padding=-12, fontsize=8, color="white"
    )
    ax.bar_label(bars, [f"{v:.1f}" if v < 12 else "" for v in values], fontsize=8)
    ax.set(ylim=(0, 100), ylabel="accuracy (%)", title="Per-class test accuracy")
    ax.tick_params(axis="x", labelrotation=45 if len(classes) > 6 else 0)
    points = round(100 * NEAR_OVERALL)
    meaning = {
        GREEN: f"more than {points} points above",
        BLUE: f"within {points} points of",
        RED: f"more than {points} points below",
    }
    handles = [Patch(color=c, label=f"{meaning[c]} overall") for c in meaning if c in colours]  # those drawn
    handles.append(Line2D([], [], color="black", linestyle="--", label=f"overall {100 * overall:.2f}%"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return _save(fig, path)


def confusion_matrix(counts: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """Row-normalised (each true class sums to 1); a cell shows its count and its share of the row."""
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(classes)
    fig = Figure(figsize=(max(7, 0.85 * n + 2), max(6, 0.8 * n + 1.5)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (row-normalised)")
    if n <= 20:  # beyond that the numbers no longer fit in the cells
        for i, j in np.ndindex(n, n):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(
                j, i, f"{counts[i, j]}\n{share[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
            )
    _save(fig, path)


def image_grid(
    images: np.ndarray, titles: Sequence[str], colours: Sequence[str], title: str, path: Path
) -> None:
    """Up to 16 images (N, H, W, 3) uint8 in a 4-column grid, each with its coloured title."""
    cols = 4
    rows = max(1, -(-len(images) // cols))
    # Fixed spacing rather than a layout engine: 16 small axes make constrained layout the slowest step.
    fig = Figure(figsize=(10, 2.6 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, gridspec_kw={"hspace": 0.3, "wspace": 0.1})).ravel()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.6 / (2.6 * rows + 0.6))
    for ax in axes:
        ax.axis("off")
    for ax, image, text, colour in zip(axes, images, titles, colours, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(text, color=colour, fontsize=9)
    if len(images) == 0:
        axes[0].text(0.0, 0.5, "no images to show", fontsize=12)
    fig.suptitle(title)
    _save(fig, path)


def training_history(history: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """Loss and accuracy per epoch (train and validation) and the learning rate per optimiser step."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        for split, colour in (("train", BLUE), ("val", ORANGE)):
            if points := history.get(f"{split}/{metric}"):
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, color=colour, label=split)
        ax.set(xlabel="epoch", ylabel=label, title=f"{label.capitalize()} per epoch")
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    if history.get("lr"):
        x, y = zip(*history["lr"], strict=True)
        ax_lr.plot(x, y, color=GREEN)
    ax_lr.set(xlabel="optimiser step", ylabel="learning rate", title="Learning-rate schedule")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.grid(alpha=0.3)
    _save(fig, path)


def reliability_diagram(
    calibration: dict, per_class: dict[str, dict], confidence: np.ndarray, correct: np.ndarray, path: Path
) -> None:
    """Accuracy against confidence per bin (the gap to the diagonal is miscalibration), the confidence of
    right and wrong predictions, and per class: accuracy beside the mean confidence of right and wrong ones."""
    fig = Figure(figsize=(17, 5), layout="constrained")
    ax_rel, ax_hist, ax_cls = fig.subplots(1, 3, width_ratios=[1, 1, 1.5])
    bins = calibration["bins"]

    filled = [b for b in bins if b["count"]]
    lefts, accuracy = [b["lower"] for b in filled], [b["accuracy"] for b in filled]
    bar = {"width": bins[0]["upper"] - bins[0]["lower"], "align": "edge"}
    ax_rel.bar(lefts, accuracy, color=BLUE, edgecolor="black", linewidth=0.5, label="accuracy", **bar)
    # The gap spans accuracy to mean confidence: above the bar when over-confident, inside it when under.
    gap = [abs(b["confidence"] - b["accuracy"]) for b in filled]
    low = [min(b["confidence"], b["accuracy"]) for b in filled]
    hatched = {"fill": False, "hatch": "//", "edgecolor": RED}
    ax_rel.bar(lefts, gap, bottom=low, label="gap to mean confidence", **hatched, **bar)
    ax_rel.plot([0, 1], [0, 1], linestyle="--", color=GREY, label="perfect calibration")
    title = f"Reliability ({len(bins)} bins)"
    ax_rel.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class probability)", ylabel="accuracy", title=title
    )
    text = (
        f"ECE {100 * calibration['ece']:.2f}%\nNLL {calibration['nll']:.3f}\n"
        f"confidence right {pct(calibration['confidence_correct'])}\n"
        f"confidence wrong {pct(calibration['confidence_wrong'])}"
    )
    box = {"facecolor": "white", "alpha": 0.9, "edgecolor": GREY}
    ax_rel.text(0.03, 0.97, text, transform=ax_rel.transAxes, va="top", fontsize=9, bbox=box)
    ax_rel.legend(loc="lower right", fontsize=8)

    edges = np.linspace(0, 1, len(bins) + 1)
    # Side by side in each bin, not stacked: each bar is its own count.
    ax_hist.hist(
        [confidence[correct], confidence[~correct]], edges, color=[GREEN, RED], label=["right", "wrong"]
    )
    ax_hist.set(xlim=(0, 1), xlabel="confidence", ylabel="images")
    ax_hist.set_title("Confidence: right and wrong predictions (counts)")
    ax_hist.legend()

    names = list(per_class)
    x = np.arange(len(names))
    series = [
        ("accuracy", "accuracy", BLUE),
        ("confidence_correct", "confidence when right", GREEN),
        ("confidence_wrong", "confidence when wrong", RED),
    ]
    for k, (key, label, colour) in enumerate(series):
        values = [per_class[n][key] if per_class[n][key] is not None else np.nan for n in names]
        ax_cls.bar(x + (k - 1) * 0.27, values, width=0.27, color=colour, label=label)
    many = len(names) > 6
    ax_cls.set_xticks(x, names, rotation=45 if many else 0, ha="right" if many else "center")
    ax_cls.set(ylim=(0, 1), ylabel="fraction")
    ax_cls.set_title("Per class: accuracy, mean confidence when right and when wrong", pad=22)
    # Between the title and the bars, so that it covers none of them.
    ax_cls.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    _save(fig, path)
