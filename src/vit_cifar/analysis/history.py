"""A run's training history, read back from Lightning's CSV log (``<run>/csv/metrics.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

from vit_cifar.errors import ConfigError

# Columns of the CSV log -> series names; epoch-level values are keyed by epoch, the learning rate by step.
EPOCH_COLUMNS = {
    "train/loss_epoch": "train/loss",
    "train/acc": "train/acc",
    "val/loss": "val/loss",
    "val/acc": "val/acc",
}


def find_history(ckpt_path: str | Path, given: str | None) -> tuple[Path | None, dict | None, str | None]:
    """The CSV log to plot (the one given, which must exist, or the checkpoint's run's when it has one), its
    history, and why there is none to plot when there is not."""
    if given and not Path(given).is_file():
        raise ConfigError(
            f"history={given} does not exist: give the run's csv/metrics.csv, or leave it unset"
        )
    # The train command logs a run whose checkpoints sit in <run>/checkpoints/ to <run>/csv/metrics.csv.
    path = Path(given) if given else Path(ckpt_path).resolve().parent.parent / "csv" / "metrics.csv"
    if not path.is_file():
        return (
            None,
            None,
            "no training log found beside the checkpoint (<run>/csv/metrics.csv); pass history=<metrics.csv>",
        )
    try:
        history = read_history(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return path, None, f"{path} could not be read: {err}"
    if not any(history.values()):
        return path, None, f"{path} holds no epoch or learning-rate values"
    return path, history, None


def read_history(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Series ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` as (epoch, value), one point per epoch
    (the last logged, so a resumed epoch counts once), and ``lr`` as (step, value) from the first param
    group."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    per_epoch: dict[str, dict[int, float]] = {name: {} for name in EPOCH_COLUMNS.values()}
    lr: dict[int, float] = {}
    # train/lr/decay (the weights' group) first; runs logged before the groups had names: lr-<optimiser>/pg1
    lr_columns = sorted(c for c in (rows[0].keys() if rows else []) if c.startswith(("train/lr", "lr-")))
    for row in rows:
        epoch = _number(row.get("epoch"))
        for column, name in EPOCH_COLUMNS.items():
            value = _number(row.get(column))
            if value is not None and epoch is not None:
                per_epoch[name][int(epoch)] = value
        step = _number(row.get("step"))
        value = _number(row.get(lr_columns[0])) if lr_columns else None
        if value is not None and step is not None:
            lr[int(step)] = value
    history = {name: sorted(points.items()) for name, points in per_epoch.items()}
    history["lr"] = sorted(lr.items())
    # Epoch numbers in the log start at 0; plot them as epochs completed (1-based), like the checkpoints.
    return {
        name: [(x + 1, y) if name != "lr" else (x, y) for x, y in points] for name, points in history.items()
    }


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
