"""The evaluation's numbers on cases small enough to check by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vit_cifar.analysis.metrics import reliability_bins, summarise, top_confusions
from vit_cifar.analysis.report import weakest_classes


def one_hot_probs(predicted: list[int], confidence: list[float], num_classes: int) -> torch.Tensor:
    """Probabilities whose argmax is ``predicted`` with that ``confidence``, the rest spread evenly."""
    probs = torch.zeros(len(predicted), num_classes, dtype=torch.float64)
    for i, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        probs[i] = (1 - c) / (num_classes - 1)
        probs[i, p] = c
    return probs


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    m = summarise(one_hot_probs(predicted, [0.8] * 9, 3), targets, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    rows = list(m["per_class"].values())
    assert [(r["correct"], r["total"]) for r in rows] == [(2, 3), (1, 2), (3, 4)]
    assert [r["accuracy"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 3 / 4])


def test_a_class_without_images_has_no_accuracy():
    m = summarise(one_hot_probs([0, 0], [0.9, 0.9], 2), torch.tensor([0, 0]), ["a", "b"])
    json.dumps(m, allow_nan=False)
    empty = m["per_class"]["b"]
    assert (empty["correct"], empty["total"], empty["accuracy"], empty["ece"]) == (0, 0, None, None)


def test_ece_on_a_constructed_case():
    # Bin [13/15, 14/15): four predictions at 0.9, three right -> |0.75 - 0.9| = 0.15, weight 4/6.
    # Bin [9/15, 10/15): two predictions at 0.62, one right -> |0.5 - 0.62| = 0.12, weight 2/6.
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    probs = one_hot_probs([0, 1, 2, 1, 1, 0], [0.9, 0.9, 0.9, 0.9, 0.62, 0.62], 3)
    expected = 4 / 6 * 0.15 + 2 / 6 * 0.12
    ece = summarise(probs, targets, ["a", "b", "c"])["calibration"]["ece"]
    assert ece == pytest.approx(expected, abs=1e-6)
    bins = {k: b for k, b in enumerate(reliability_bins(probs, targets, 15)) if b["count"]}
    assert set(bins) == {9, 13}
    assert (bins[13]["count"], bins[13]["accuracy"], bins[13]["confidence"]) == (4, 0.75, pytest.approx(0.9))
    assert (bins[9]["count"], bins[9]["accuracy"], bins[9]["confidence"]) == (2, 0.5, pytest.approx(0.62))


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Ten predictions at 0.7 of which seven are right: confidence equals accuracy.
    targets = torch.zeros(10, dtype=torch.long)
    probs = one_hot_probs([0] * 7 + [1] * 3, [0.7] * 10, 4)
    assert summarise(probs, targets, list("abcd"))["calibration"]["ece"] == pytest.approx(0.0, abs=1e-7)


def test_reliability_bins_give_torchmetrics_ece():
    """The diagram's bins and the reported ECE (torchmetrics) are the same measurement."""
    generator = torch.Generator().manual_seed(0)
    probs = (torch.randn(2000, 10, generator=generator) * 3).softmax(dim=1)
    targets = torch.randint(0, 10, (2000,), generator=generator)
    assert probs.max() < 1.0  # torchmetrics puts a confidence of exactly 1.0 in a bin of its own
    cal = summarise(probs, targets, list("abcdefghij"))["calibration"]
    bins = cal["bins"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 2000
    from_bins = sum(b["count"] / 2000 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert from_bins == pytest.approx(cal["ece"], abs=1e-6)


def test_negative_log_likelihood_by_hand():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1, 0])
    # The third probability underflowed to 0: it counts as 1e-12 instead of infinity.
    expected = -(math.log(0.5) + math.log(0.8) + math.log(1e-12)) / 3
    assert summarise(probs, targets, ["a", "b", "c"])["calibration"]["nll"] == pytest.approx(expected)


def test_top_confusions_most_frequent_first_ties_in_class_order():
    cm = torch.tensor([[50, 3, 7, 0], [3, 40, 0, 1], [9, 0, 30, 3], [0, 0, 0, 20]])
    pairs = top_confusions(cm, ["a", "b", "c", "d"], k=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "a", 9),
        ("a", "c", 7),
        ("a", "b", 3),
        ("b", "a", 3),
        ("c", "d", 3),
    ]
    assert top_confusions(torch.eye(3, dtype=torch.long) * 5, ["a", "b", "c"]) == []


def test_summarise_counts_and_per_class_calibration():
    targets = torch.tensor([0, 0, 1, 1])
    probs = one_hot_probs([0, 1, 1, 1], [0.9, 0.6, 0.8, 0.7], 2)
    m = summarise(probs, targets, ["cat", "dog"])
    json.dumps(m, allow_nan=False)  # metrics.json is strict JSON
    assert (m["test_acc"], m["correct"], m["test_images"], m["errors"], m["error_rate"]) == (
        0.75,
        3,
        4,
        1,
        0.25,
    )
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["top_confusions"] == [{"true": "cat", "predicted": "dog", "count": 1}]
    cat, dog = m["per_class"]["cat"], m["per_class"]["dog"]
    assert (cat["correct"], cat["total"], cat["accuracy"]) == (1, 2, 0.5)
    assert cat["confidence_correct"] == pytest.approx(0.9) and cat["confidence_wrong"] == pytest.approx(0.6)
    assert dog["confidence_correct"] == pytest.approx(0.75) and dog["confidence_wrong"] is None
    cal = m["calibration"]
    assert cal["ece_bins"] == 15 and len(cal["bins"]) == 15
    assert cal["confidence_correct"] == pytest.approx(0.8) and cal["confidence_wrong"] == pytest.approx(0.6)
    assert cal["mean_confidence"] == pytest.approx(0.75)


def test_weakest_classes_include_ties():
    rows = {
        name: {"accuracy": a} for name, a in [("a", 0.9), ("b", 0.5), ("c", 0.7), ("d", 0.7), ("e", 0.95)]
    }
    assert weakest_classes(rows) == {"b", "c", "d"}
    assert weakest_classes({"a": {"accuracy": 0.9}, "b": {"accuracy": None}}) == {"a"}
