"""Classification and calibration metrics as pure functions of predicted probabilities and true labels.

Counting and the expected calibration error come from torchmetrics; what it does not offer (per-class
confidence, the reliability bins a diagram draws, the top confusion pairs) is written here on top of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_confusion_matrix

ECE_BINS = 15


def confusion_matrix(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class (the argmax of ``probs``)."""
    return multiclass_confusion_matrix(probs, targets, num_classes).long()


def per_class_accuracy(cm: torch.Tensor) -> list[dict]:
    """Correct, total and accuracy of each true class (a row of the confusion matrix)."""
    correct, total = cm.diagonal(), cm.sum(dim=1)
    return [
        {"correct": int(c), "total": int(t), "accuracy": float(c) / float(t) if t else None}
        for c, t in zip(correct, total, strict=True)
    ]


def expected_calibration_error(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS
) -> float | None:
    """Top-label ECE, equal-width bins, L1: sum over bins of |accuracy - confidence| x share of samples."""
    if len(targets) == 0:
        return None
    return float(multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=n_bins, norm="l1"))


def negative_log_likelihood(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean -log p(true class); probabilities that underflowed to 0 count as 1e-12 (27.6 nats)."""
    return float(F.nll_loss(probs.double().clamp_min(1e-12).log(), targets))


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin [k/n, (k+1)/n) (the last one closed): count, mean confidence, accuracy.

    The same bins as :func:`expected_calibration_error` except at a confidence of exactly 1.0, which
    torchmetrics keeps in a bin of its own and this puts in the last bin (what a diagram can draw).
    """
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    index = (confidence.double() * n_bins).long().clamp(max=n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    bins = []
    for k in range(n_bins):
        n = int(count[k])
        bins.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": n,
                "confidence": float(conf_sum[k] / n) if n else None,
                "accuracy": float(acc_sum[k] / n) if n else None,
            }
        )
    return bins


def confidence_summary(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Mean confidence overall, of right and of wrong predictions (None when there are none), and accuracy."""
    confidence, predicted = probs.max(dim=1)
    right = predicted == targets

    def mean(values: torch.Tensor) -> float | None:
        return float(values.double().mean()) if len(values) else None

    return {
        "accuracy": mean(right),
        "mean_confidence": mean(confidence),
        "confidence_correct": mean(confidence[right]),
        "confidence_wrong": mean(confidence[~right]),
    }


def top_confusions(cm: torch.Tensor, classes: list[str], k: int = 5) -> list[dict]:
    """The ``k`` largest off-diagonal cells, most frequent first (ties: by true, then predicted class)."""
    off = cm.clone()
    off.fill_diagonal_(0)
    cells = sorted(
        ((int(off[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if off[i, j]),
        key=lambda cell: (-cell[0], cell[1], cell[2]),
    )
    return [{"true": classes[i], "predicted": classes[j], "count": n} for n, i, j in cells[:k]]


def summarise(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], n_bins: int = ECE_BINS) -> dict:
    """Everything ``metrics.json`` reports about predictions: accuracy, per class, confusions, calibration."""
    probs, targets = probs.float().cpu(), targets.long().cpu()
    cm = confusion_matrix(probs, targets, len(classes))
    total, correct = int(cm.sum()), int(cm.diagonal().sum())
    per_class = {}
    for c, (name, row) in enumerate(zip(classes, per_class_accuracy(cm), strict=True)):
        mask = targets == c
        per_class[name] = {**row, **_calibration_of(probs[mask], targets[mask], n_bins)}
    return {
        "test_acc": correct / total,
        "correct": correct,
        "test_images": total,
        "errors": total - correct,
        "error_rate": (total - correct) / total,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "top_confusions": top_confusions(cm, classes),
        "calibration": {
            "ece": expected_calibration_error(probs, targets, n_bins),
            "ece_bins": n_bins,
            "nll": negative_log_likelihood(probs, targets),
            **{k: v for k, v in confidence_summary(probs, targets).items() if k != "accuracy"},
            "bins": reliability_bins(probs, targets, n_bins),
        },
    }


def _calibration_of(probs: torch.Tensor, targets: torch.Tensor, n_bins: int) -> dict:
    """The calibration figures of one class's images (its ECE is over those images' top-label confidence)."""
    summary = confidence_summary(probs, targets)
    del summary["accuracy"]  # already in the row, from the confusion matrix
    return {**summary, "ece": expected_calibration_error(probs, targets, n_bins)}
