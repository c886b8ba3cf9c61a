"""What the commands say about their results: ``report.md`` (the seed's tables regenerated from one
evaluation, with its figures and how it was made) and the one line train and evaluate print."""

from __future__ import annotations

WEAKEST = 2  # the seed's per-class table bolds its two weakest classes
SAMPLES = 16  # the seed's sample and misclassified grids draw 16 images each (with metrics' "sample_seed")
TTA_DESCRIPTIONS = {  # metrics' "tta" (vit_cifar.inference.engine.tta_mode)
    "none": "none",
    "flip": "horizontal flip (softmax averaged)",
    "flip_shift": "horizontal flip and 2-pixel diagonal shifts, 6 views (softmax averaged)",
}


def weakest_classes(per_class: dict[str, dict], k: int = WEAKEST) -> set[str]:
    """The ``k`` classes with the lowest accuracy, and any class tied with the k-th."""
    measured = {name: row["accuracy"] for name, row in per_class.items() if row["accuracy"] is not None}
    threshold = sorted(measured.values())[:k][-1] if measured else -1
    return {name for name, accuracy in measured.items() if accuracy <= threshold}


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


def render_report(m: dict, history_note: str | None = None) -> str:
    """Markdown from ``metrics.json``'s dict ``m``; every figure is drawn except the training history when
    ``history_note`` says why it is not."""
    weak = weakest_classes(m["per_class"])
    cal = m["calibration"]
    epoch = m.get("checkpoint_after_epoch")
    seed = m.get("train_seed")
    precision = "float32" if str(m["precision"]) == "32" else f"{m['precision']} autocast"
    tally = f"{m['correct']:,} / {m['test_images']:,}"
    bold = lambda name, text: f"**{text}**" if name in weak else text
    per_class = [
        f"| {bold(n, n)} | {bold(n, pct(r['accuracy'], 1))} | {r['correct']:,} / {r['total']:,} |"
        for n, r in m["per_class"].items()
    ]
    confusions = [f"| {p['true']} | {p['predicted']} | {p['count']:,} |" for p in m["top_confusions"]]
    calibration = [
        f"| {name} | {pct(r['accuracy'], 1)} | {pct(r['mean_confidence'], 1)} | {pct(r['confidence_correct'], 1)} "
        f"| {pct(r['confidence_wrong'], 1)} | {pct(r['ece'], 2)} |"
        for name, r in m["per_class"].items()
    ]
    history = "![Training History](training_history.png)"
    if history_note:
        history = f"*Training History: not drawn ({history_note}).*"
    return f"""# Evaluation of `{m["checkpoint_name"]}`

## Results

| Model | Test Accuracy | Parameters | Correct / Total | Errors |
|---|---|---|---|---|
| {m["model"]} | **{pct(m["test_acc"], 2)}** | {m["params"] / 1e6:.2f}M | {tally} | {m["errors"]:,} \
({pct(m["error_rate"], 2)}) |

## Per-Class Results

| Class | Accuracy | Correct / Total |
|---|---|---|
{chr(10).join(per_class)}
| **Overall** | **{pct(m["test_acc"], 2)}** | {tally} |

The weakest classes ({WEAKEST}, or more when tied) are in bold.

![Per-Class Accuracy](per_class_accuracy.png)

*Bars are coloured against this model's overall accuracy (the dashed line): green more than 5 points above it, \
blue within 5 points, red more than 5 points below.*

### Top Misclassification Pairs

| True Class | Predicted As | Count |
|---|---|---|
{chr(10).join(confusions)}

![Confusion Matrix](confusion_matrix.png)

*Row-normalised confusion matrix: each cell shows the raw count and the proportion of that true class.*

## Calibration

| ECE ({cal["ece_bins"]} bins) | NLL | Mean confidence | Confidence when right | Confidence when wrong |
|---|---|---|---|---|
| {pct(cal["ece"], 2)} | {cal["nll"]:.4f} | {pct(cal["mean_confidence"], 1)} | {pct(cal["confidence_correct"], 1)} \
| {pct(cal["confidence_wrong"], 1)} |

Per class (over the images of each true class):

| Class | Accuracy | Mean confidence | Confidence when right | Confidence when wrong | ECE |
|---|---|---|---|---|---|
{chr(10).join(calibration)}

![Reliability Diagram](reliability_diagram.png)

*Left: accuracy per confidence bin; red is the gap to the diagonal, whose weighted mean is the ECE. Middle: \
confidence of right and wrong predictions. Right: per-class accuracy and mean confidence.*

## Error Analysis

![Sample Predictions](sample_predictions.png)

*{min(SAMPLES, m["test_images"])} randomly sampled test predictions (seed {m["sample_seed"]}). Green titles are \
right, red titles wrong; the confidence is the softmax probability of the predicted class.*

![Misclassified Samples](misclassified_samples.png)

*{min(SAMPLES, m["errors"])} randomly sampled misclassified examples (seed {m["sample_seed"]}) from the \
{m["errors"]:,} errors ({pct(m["error_rate"], 1)} error rate), titled true -> predicted.*

## Training History

{history}

## How This Was Measured

| | |
|---|---|
| Checkpoint | `{m["checkpoint"]}` |
| Training | checkpoint {f"after epoch {epoch}" if epoch else "epoch unknown"}, training seed \
{"unknown" if seed is None else seed} |
| Data | {m["data"]}, {m["test_images"]:,} test images |
| Device | {m["device"]} |
| Evaluation time | {m["eval_s"]:.1f} s inference ({m["images_per_s"]:.0f} images/s), {m["wall_s"]:.1f} s in all |
| Batch size, precision | {m["batch_size"]}, {precision} |
| Test-time augmentation | {TTA_DESCRIPTIONS[m["tta"]]} |
| Evaluated | {m["evaluated_at"]} |
"""


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; "n/a" for None or NaN (no images to measure it on)."""
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}%"
