"""What CPU time buys: test accuracy against the training budget (``trainer.max_time``) of finished runs.

    python scripts/minutes_curve.py RUN_FOLDER [RUN_FOLDER ...] --out docs/figures/cpu_hour/minutes_vs_accuracy.png

Each folder is a ``python -m vit_cifar.train`` run with a time budget (``.hydra/config.yaml``) and a test accuracy
(``metrics.json``). Prints the table docs/recipes.md shows and draws the figure: one line per machine (metrics.json's
``device``) through the mean of each budget, every run a dot.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic


def budget_minutes(max_time) -> float:
    """Lightning's ``max_time`` ("DD:HH:MM:SS" or a dict of timedelta fields) in minutes."""
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(part) for part in max_time.split(":"))
        return days * 1440 + hours * 60 + minutes + seconds / 60
    fields = {"days": 1440, "hours": 60, "minutes": 1, "seconds": 1 / 60}
    return sum(fields[key] * float(value) for key, value in dict(max_time).items())


def read_run(folder: Path) -> dict:
    metrics_file, config_file = folder / "metrics.json", folder / ".hydra" / "config.yaml"
    for needed in (metrics_file, config_file):
        if not needed.is_file():
            sys.exit(f"error: {needed} is missing: give the folders of finished training runs")
    try:
        metrics = json.loads(metrics_file.read_text())
        max_time = OmegaConf.load(config_file).trainer.get("max_time")
        minutes = None if max_time is None else budget_minutes(max_time)
    except (ValueError, TypeError, KeyError) as err:  # JSON, YAML or a max_time Lightning would not take
        sys.exit(f"error: {folder}: its metrics.json or trainer.max_time cannot be read ({err})")
    if minutes is None or "test_acc" not in metrics:
        sys.exit(
            f"error: {folder} has no time budget or no test accuracy: train with trainer.max_time and test"
        )
    return {**metrics, "minutes": minutes, "folder": str(folder)}


def table(runs: list[dict]) -> str:
    lines = [
        "| minutes of training | seed | steps | epochs | test accuracy, final step | start to metrics.json | machine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in sorted(runs, key=lambda r: (r["device"], r["minutes"], r["seed"])):
        wall = f"{int(run['wall_s'] // 60)} min {int(run['wall_s'] % 60)} s"
        lines.append(
            f"| {run['minutes']:g} | {run['seed']} | {run['steps']:,} | {run['epochs']} | "
            f"**{100 * run['test_acc']:.2f}%** | {wall} | {run['device']} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], file) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    by_device = defaultdict(list)
    for run in runs:
        by_device[run["device"]].append(run)
    for i, (device, group) in enumerate(sorted(by_device.items())):
        budgets = sorted({run["minutes"] for run in group})
        means = [100 * statistics.fmean(r["test_acc"] for r in group if r["minutes"] == b) for b in budgets]
        ax.plot(budgets, means, color=f"C{i}", marker="o", label=device)
        ax.scatter([r["minutes"] for r in group], [100 * r["test_acc"] for r in group], color=f"C{i}", s=12)
        for budget, mean in zip(budgets, means, strict=True):
            ax.annotate(
                f"{mean:.2f}%", (budget, mean), textcoords="offset points", xytext=(4, -12), fontsize=8
            )
    ax.set(xlabel="minutes of training (trainer.max_time)", ylabel="test accuracy, final step (%)")
    ax.set_title("What CPU time buys: CIFAR-10 test accuracy against the training budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.savefig(file, format="png", dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders of finished training runs")
    parser.add_argument("--out", type=Path, help="the figure (PNG); without it, only the table is printed")
    args = parser.parse_args(argv)
    runs = [read_run(folder) for folder in args.runs]
    print(table(runs))
    if args.out:
        write_atomic(args.out, lambda file: plot(runs, file))
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
