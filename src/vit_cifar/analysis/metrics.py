"""Classification and calibration metrics as pure functions of predicted probabilities and true labels.

Counting and the expected calibration error come from torchmetrics; what it does not offer (per-class
confidence, the reliability bins a diagram draws, the top confusion pairs) is written here on top of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error, multiclass_confusion_matrix

ECE_BINS = 15


def summarise(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], n_bins: int = ECE_BINS) -> dict:
    """Everything ``metrics.json`` reports about predictions: accuracy, per class, confusions, calibration."""
    probs, targets = probs.float().cpu(), targets.long().cpu()
    cm = multiclass_confusion_matrix(probs, targets, len(classes)).long()  # row = true, column = predicted
    total, correct = int(cm.sum()), int(cm.trace())
    per_class = {}
    for c, name in enumerate(classes):
        right, count, mask = int(cm[c, c]), int(cm[c].sum()), targets == c
        per_class[name] = {
            "correct": right,
            "total": count,
            "accuracy": right / count if count else None,  # a class without test images has none
            **calibration(probs[mask], targets[mask], n_bins),  # its ECE: over that class's images
        }
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
            **calibration(probs, targets, n_bins),
            "ece_bins": n_bins,
            # Mean -log p(true class); probabilities that underflowed to 0 count as 1e-12 (27.6 nats).
            "nll": float(F.nll_loss(probs.double().clamp_min(1e-12).log(), targets)),
            "bins": reliability_bins(probs, targets, n_bins),
        },
    }


def calibration(probs: torch.Tensor, targets: torch.Tensor, n_bins: int) -> dict:
    """Top-label ECE (equal-width bins, L1: the sum over bins of |accuracy - confidence| x share of images) and
    the mean confidence overall, of right and of wrong predictions; None where there are no such images."""
    confidence, predicted = probs.max(dim=1)
    right = predicted == targets

    mean = lambda values: float(values.double().mean()) if len(values) else None
    ece = multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=n_bins, norm="l1")
    return {
        "ece": float(ece) if len(targets) else None,
        "mean_confidence": mean(confidence),
        "confidence_correct": mean(confidence[right]),
        "confidence_wrong": mean(confidence[~right]),
    }


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin [k/n, (k+1)/n) (the last one closed): count, mean confidence, accuracy.

    The same bins as the ECE's except at a confidence of exactly 1.0, which torchmetrics keeps in a bin of
    its own and this puts in the last bin (what a diagram can draw).
    """
    confidence, predicted = probs.double().max(dim=1)
    index = (confidence * n_bins).long().clamp(max=n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=(predicted == targets).double(), minlength=n_bins)
    return [
        {
            "lower": k / n_bins,
            "upper": (k + 1) / n_bins,
            "count": int(count[k]),
            "confidence": float(conf_sum[k] / count[k]) if count[k] else None,
            "accuracy": float(acc_sum[k] / count[k]) if count[k] else None,
        }
        for k in range(n_bins)
    ]


def top_confusions(cm: torch.Tensor, classes: list[str], k: int = 5) -> list[dict]:
    """The ``k`` largest off-diagonal cells, most frequent first (ties: by true, then predicted class)."""
    off = cm.clone().fill_diagonal_(0).flatten()
    counts, cells = off.sort(descending=True, stable=True)  # stable: ties stay in row-major order
    n = len(classes)
    return [
        {"true": classes[cell // n], "predicted": classes[cell % n], "count": count}
        for count, cell in zip(counts[:k].tolist(), cells[:k].tolist(), strict=True)
        if count
    ]
