"""What the commands say about their results: ``report.md`` (the seed's tables regenerated from one
evaluation, with its figures and how it was made) and the one line train and evaluate print."""

from __future__ import annotations

WEAKEST = 2  # the seed's per-class table bolds its two weakest classes
SAMPLES = 16  # the seed's sample and misclassified grids draw 16 images each (with metrics' "sample_seed")


def weakest_classes(per_class: dict[str, dict], k: int = WEAKEST) -> set[str]:
    """The ``k`` classes with the lowest accuracy, and any class tied with the k-th."""
    accuracies = sorted(row["accuracy"] for row in per_class.values() if row["accuracy"] is not None)
    if not accuracies:
        return set()
    threshold = accuracies[min(k, len(accuracies)) - 1]
    return {
        name
        for name, row in per_class.items()
        if row["accuracy"] is not None and row["accuracy"] <= threshold
    }


def summary_line(m: dict) -> str:
    """The line train and evaluate print about the ``metrics.json`` they wrote."""
    if m.get("pipeline_check"):  # a few batches: an accuracy here would be mistaken for a result
        tested = f", {m['test_images']:,} test images" if "test_images" in m else ""
        parts = [f"pipeline check, not a result (limited batches{tested})"]
    else:
        parts = [f"test_acc={m['test_acc']:.4f}" if "test_acc" in m else "not tested"]
    if "calibration" in m:  # an evaluation's
        parts += [f"ECE {m['calibration']['ece']:.4f}", f"NLL {m['calibration']['nll']:.4f}"]
    if m.get("checkpoint_after_epoch"):
        parts.append(f"checkpoint after epoch {m['checkpoint_after_epoch']}")
    if "epochs" in m:  # a training's
        parts.append(f"{m['epochs']} epochs")
    seed = m.get("seed", m.get("train_seed"))
    parts += [f"seed {seed}"] if seed is not None else []
    parts += [m["data"], f"{m['params']:,} params", m["device"]]
    if "images_per_s" in m:
        parts.append(f"{m['images_per_s']:.0f} images/s")
    parts.append(f"{m['wall_s']:.0f} s")
    if m.get("run_folder"):
        parts.append(f"run folder {m['run_folder']}")
    return " | ".join(parts)


def render_report(m: dict, figures: dict[str, str | None], notes: dict[str, str] | None = None) -> str:
    """Markdown from ``metrics.json``'s dict ``m``; ``figures`` maps a figure's role to its file (None: not
    drawn, with the reason in ``notes``)."""
    notes = notes or {}
    weak = weakest_classes(m["per_class"])
    cal = m["calibration"]
    lines = [
        f"# Evaluation of `{m['checkpoint_name']}`",
        "",
        f"{m['model']} ({m['params']:,} parameters), {_trained(m)}, evaluated on {m['data']} "
        f"({m['test_images']:,} images) on {m['device']}: {m['eval_s']:.1f} s of inference "
        f"({m['images_per_s']:.0f} images/s), {m['wall_s']:.1f} s in all. Test-time augmentation: "
        f"{'horizontal flip (softmax averaged)' if m['tta'] else 'none'}.",
        "",
        "## Results",
        "",
        "| Model | Test Accuracy | Parameters | Correct / Total | Errors |",
        "|---|---|---|---|---|",
        f"| {m['model']} | **{pct(m['test_acc'], 2)}** | {m['params'] / 1e6:.2f}M | "
        f"{m['correct']:,} / {m['test_images']:,} | {m['errors']:,} ({pct(m['error_rate'], 2)}) |",
        "",
        "## Per-Class Results",
        "",
        "| Class | Accuracy | Correct / Total |",
        "|---|---|---|",
    ]
    for name, row in m["per_class"].items():
        cells = [name, pct(row["accuracy"], 1)]
        if name in weak:
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {cells[0]} | {cells[1]} | {row['correct']:,} / {row['total']:,} |")
    lines += [
        f"| **Overall** | **{pct(m['test_acc'], 2)}** | {m['correct']:,} / {m['test_images']:,} |",
        "",
        f"The weakest classes ({WEAKEST}, or more when tied) are in bold.",
        "",
        *_figure(figures, notes, "per_class_accuracy", "Per-Class Accuracy"),
        "*Bars are coloured against this model's overall accuracy (the dashed line): green more than 5 points "
        "above it, blue within 5 points, red more than 5 points below.*",
        "",
        "### Top Misclassification Pairs",
        "",
        "| True Class | Predicted As | Count |",
        "|---|---|---|",
        *[f"| {p['true']} | {p['predicted']} | {p['count']:,} |" for p in m["top_confusions"]],
        "",
        *_figure(figures, notes, "confusion_matrix", "Confusion Matrix"),
        "*Row-normalised confusion matrix: each cell shows the raw count and the proportion of that true "
        "class.*",
        "",
        "## Calibration",
        "",
        f"| ECE ({cal['ece_bins']} bins) | NLL | Mean confidence | Confidence when right "
        "| Confidence when wrong |",
        "|---|---|---|---|---|",
        f"| {pct(cal['ece'], 2)} | {cal['nll']:.4f} | {pct(cal['mean_confidence'], 1)} | "
        f"{pct(cal['confidence_correct'], 1)} | {pct(cal['confidence_wrong'], 1)} |",
        "",
        "Per class (over the images of each true class):",
        "",
        "| Class | Accuracy | Mean confidence | Confidence when right | Confidence when wrong | ECE |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | {pct(r['accuracy'], 1)} | {pct(r['mean_confidence'], 1)} | "
            f"{pct(r['confidence_correct'], 1)} | {pct(r['confidence_wrong'], 1)} | {pct(r['ece'], 2)} |"
            for name, r in m["per_class"].items()
        ],
        "",
        *_figure(figures, notes, "reliability_diagram", "Reliability Diagram"),
        "*Left: accuracy per confidence bin; red is the gap to the diagonal, whose weighted mean is the ECE. "
        "Middle: confidence of right and wrong predictions. Right: per-class accuracy and mean confidence.*",
        "",
        "## Error Analysis",
        "",
        *_figure(figures, notes, "sample_predictions", "Sample Predictions"),
        f"*{min(SAMPLES, m['test_images'])} randomly sampled test predictions (seed {m['sample_seed']}). "
        "Green titles are right, red titles wrong; the confidence is the softmax probability of the "
        "predicted class.*",
        "",
        *_figure(figures, notes, "misclassified_samples", "Misclassified Samples"),
        f"*{min(SAMPLES, m['errors'])} randomly sampled misclassified examples (seed {m['sample_seed']}) from the "
        f"{m['errors']:,} errors ({pct(m['error_rate'], 1)} error rate), titled true -> predicted.*",
        "",
        "## Training History",
        "",
        *_figure(figures, notes, "training_history", "Training History"),
        "## How This Was Measured",
        "",
        "| | |",
        "|---|---|",
        f"| Checkpoint | `{m['checkpoint']}` |",
        f"| Training | {_trained(m)} |",
        f"| Data | {m['data']}, {m['test_images']:,} test images |",
        f"| Device | {m['device']} |",
        f"| Evaluation time | {m['eval_s']:.1f} s inference ({m['images_per_s']:.0f} images/s), "
        f"{m['wall_s']:.1f} s in all |",
        f"| Batch size, precision | {m['batch_size']}, {_precision(m)} |",
        f"| Test-time augmentation | {'horizontal flip' if m['tta'] else 'none'} |",
        f"| Evaluated | {m['evaluated_at']} |",
        "",
    ]
    return "\n".join(lines)


def _precision(m: dict) -> str:
    return "float32" if str(m.get("precision", "32")) == "32" else f"{m['precision']} autocast"


def _trained(m: dict) -> str:
    epoch = (
        f"after epoch {m['checkpoint_after_epoch']}" if m.get("checkpoint_after_epoch") else "epoch unknown"
    )
    seed = f"training seed {m['train_seed']}" if m.get("train_seed") is not None else "training seed unknown"
    return f"checkpoint {epoch}, {seed}"


def _figure(figures: dict[str, str | None], notes: dict[str, str], role: str, title: str) -> list[str]:
    if figures.get(role):
        return [f"![{title}]({figures[role]})", ""]
    return [f"*{title}: not drawn ({notes.get(role, 'no data')}).*", ""]


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; "n/a" for None or NaN (no images to measure it on)."""
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}%"
