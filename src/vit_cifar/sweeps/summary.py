"""The summary of a sweep's folder: ``summarise`` reads every job folder Hydra made (the ones with
``.hydra/overrides.yaml``), each ended by ``metrics.json`` (written by ``train``) or ``error.txt`` (written by
:func:`vit_cifar.sweeps.jobs.run_sweep_job`), and writes ``summary.csv``, ``summary.md`` and ``summary.png`` into
the folder, plus ``summary_seeds.csv`` when ``seed`` is one of the swept keys. Jobs are ranked by validation
accuracy; the test accuracy is shown beside it and never ranks anything."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from omegaconf import OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.errors import VitCifarError, first_line

ERROR_FILE = "error.txt"
OK = "ok"
NUMBERS = ("val_acc", "test_acc", "epochs", "wall_s")  # each job's numbers, in the files' column order


def validation_accuracy(metrics: dict) -> float | None:
    """The accuracy a sweep ranks and a sweeper maximises: the selected (best) epoch's validation accuracy,
    else the last epoch's; ``None`` without a validation split. Never the test accuracy."""
    value = metrics.get("val_acc_best", metrics.get("val_acc_last_epoch"))
    return None if value is None else float(value)


@dataclass
class Job:
    """One job folder of a sweep: its overrides (key -> value, as Hydra wrote them), outcome and metrics."""

    name: str
    overrides: dict[str, str]
    status: str  # ok, failed, or "no result"
    metrics: dict = field(default_factory=dict)
    error: str = ""

    @property
    def val_acc(self) -> float | None:
        return validation_accuracy(self.metrics)

    def get(self, number: str) -> float | None:
        """One of NUMBERS: ``val_acc`` as ranked, the others as ``metrics.json`` has them."""
        return self.val_acc if number == "val_acc" else self.metrics.get(number)


def read_job(job_dir: Path, name: str) -> Job:
    """The job in ``job_dir``; a file of it that cannot be read makes it a failed job that says which, so the
    summary still covers the others."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        listed = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        parsed = OverridesParser.create().parse_overrides([str(line) for line in listed])
        overrides = {
            o.key_or_group: "null" if o.is_delete() else o.get_value_element_as_str() for o in parsed
        }
    except Exception as err:  # YAML, OmegaConf or Hydra's parser: all mean a damaged file
        return Job(
            name, {}, "failed", error=f".hydra/overrides.yaml cannot be read ({first_line(err)[:160]})"
        )
    metrics_file, error_file = job_dir / "metrics.json", job_dir / ERROR_FILE
    try:
        # The newer of the two tells how the job last ended (a job rerun in its folder may leave the other).
        if error_file.is_file() and (
            not metrics_file.is_file() or error_file.stat().st_mtime >= metrics_file.stat().st_mtime
        ):
            line = next(iter(error_file.read_text().splitlines()), "") or f"(empty {ERROR_FILE})"
            return Job(name, overrides, "failed", error=line)
        if not metrics_file.is_file():
            why = f"no metrics.json or {ERROR_FILE}: still running, or killed"
            return Job(name, overrides, "no result", error=why)
        metrics = json.loads(metrics_file.read_text())
    except (OSError, UnicodeDecodeError) as err:
        return Job(name, overrides, "failed", error=f"cannot read its files ({first_line(err)[:160]})")
    except json.JSONDecodeError as err:
        return Job(name, overrides, "failed", error=f"metrics.json does not parse: {err}")
    if not isinstance(metrics, dict):
        return Job(name, overrides, "failed", error="metrics.json is not a JSON object")
    return Job(name, overrides, OK, metrics=metrics)


def _natural(text: str) -> list:
    """Sort key that puts job 10 after job 9 (and seed 10 after seed 9)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@dataclass
class Summary:
    folder: Path
    jobs: list[Job]  # ranked: completed by validation accuracy, best first; then failed and unfinished
    swept: list[str]  # override keys whose value differs between jobs
    fixed: dict[str, str]  # overrides every job shares
    seed_groups: list[dict]  # over seeds, when "seed" is swept

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if job.status != OK]


def summarise(folder: Path) -> Summary:
    """Read a sweep's folder and write its summary files into it (each atomically)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VitCifarError(
            f"{folder} is not a folder: give the folder of a sweep, e.g. outputs/multirun/<date>/<time>"
        )
    job_dirs = [mark.parent.parent for mark in folder.glob("**/.hydra/overrides.yaml")]
    names = sorted((d.relative_to(folder).as_posix() for d in job_dirs if d != folder), key=_natural)
    jobs = [read_job(folder / name, name) for name in names]
    if not jobs:
        raise VitCifarError(
            f"{folder} holds no job folders (<job>/.hydra/overrides.yaml): give the folder of a -m sweep, "
            "e.g. outputs/multirun/<date>/<time>, not one job's folder or a single run's"
        )
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))  # in the order they first appear
    # Swept: the values differ between jobs. A single job has no differences: its overrides count as swept.
    swept = [k for k in keys if len(jobs) == 1 or len({job.overrides.get(k) for job in jobs}) > 1]
    fixed = {k: jobs[0].overrides[k] for k in keys if k not in swept}
    # Completed jobs by validation accuracy, best first (a stable sort: ties and jobs without one keep job
    # order), then the failed and unfinished ones. The test accuracy plays no part.
    jobs.sort(key=lambda job: (job.status != OK, job.val_acc is None, -(job.val_acc or 0)))
    groups = over_seeds(jobs, [k for k in swept if k != "seed"]) if "seed" in swept else []
    summary = Summary(folder, jobs, swept, fixed, groups)
    rows = [
        {
            "rank": i if job.status == OK else "",
            "job": job.name,
            "status": job.status,
            **{k: job.overrides.get(k, "") for k in swept},
            **{number: job.get(number) for number in NUMBERS},
            "error": job.error,
        }
        for i, job in enumerate(jobs, 1)
    ]
    write_atomic(folder / "summary.csv", to_csv(rows))
    write_atomic(folder / "summary.md", markdown(summary, rows))
    write_atomic(folder / "summary.png", lambda file: plot_png(summary, file))
    if groups:
        write_atomic(folder / "summary_seeds.csv", to_csv(groups))
    return summary


def over_seeds(jobs: list[Job], keys: list[str]) -> list[dict]:
    """Mean and sample standard deviation (n - 1) over seeds for each setting of ``keys`` (the swept keys but
    seed), best mean validation accuracy first; ``None`` where undefined (one seed has no deviation)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, "") for k in keys), []).append(job)
    rows = []
    for setting, members in groups.items():
        done = [job for job in members if job.status == OK]
        row = dict(zip(keys, setting, strict=True))
        row["seeds"] = " ".join(sorted((job.overrides.get("seed", "") for job in done), key=_natural))
        row["n"] = len(done)
        row["failed"] = len(members) - len(done)
        for number in NUMBERS:
            values = [float(job.get(number)) for job in done if job.get(number) is not None]
            row[f"{number}_mean"] = statistics.fmean(values) if values else None
            row[f"{number}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return sorted(rows, key=lambda r: -r["val_acc_mean"] if r["val_acc_mean"] is not None else math.inf)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def markdown(summary: Summary, rows: list[dict]) -> str:
    done = len(summary.jobs) - len(summary.failed)
    lines = [
        f"# Sweep summary: {summary.folder}",
        "",
        f"{len(summary.jobs)} jobs: {done} completed, {len(summary.failed)} failed or unfinished. "
        "Ranked by validation accuracy (the selected epoch's, best first); the test accuracy is shown for "
        "reference and chooses nothing.",
        "",
    ]
    if summary.fixed:
        lines += ["Every job: `" + " ".join(f"{k}={v}" for k, v in summary.fixed.items()) + "`", ""]
    header = ["rank", "job", *summary.swept, "val acc", "test acc", "epochs", "wall time", "status"]
    cells = [
        [
            r["rank"],
            r["job"],
            *(_short(r[k]) for k in summary.swept),
            _acc(r["val_acc"]),
            _acc(r["test_acc"]),
            "" if r["epochs"] is None else r["epochs"],
            _duration(r["wall_s"]),
            r["status"] if r["status"] == OK else f"**{r['status']}**: {r['error']}",
        ]
        for r in rows
    ]
    lines += _table(header, cells)
    if summary.seed_groups:
        keys = [k for k in summary.swept if k != "seed"]
        lines += [
            "",
            "## Over seeds",
            "",
            "Mean ± sample standard deviation over the seeds that completed, "
            "best mean validation accuracy first.",
            "",
        ]
        header = [*keys, "seeds", "n", "failed", "val acc", "test acc", "mean wall time"]
        cells = [
            [
                *(_short(g[k]) for k in keys),
                g["seeds"],
                g["n"],
                g["failed"],
                _acc(g["val_acc_mean"], g["val_acc_std"]),
                _acc(g["test_acc_mean"], g["test_acc_std"]),
                _duration(g["wall_s_mean"]),
            ]
            for g in summary.seed_groups
        ]
        lines += _table(header, cells)
    return "\n".join(lines) + "\n"


def _table(header: list, rows: list[list]) -> list[str]:
    cell = lambda text: str(text).replace("|", "\\|")
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(map(cell, row)) + " |" for row in rows
    ]


def _short(text: str) -> str:
    """A value as written, but a float with many digits (Optuna's) to 4 significant ones, for reading."""
    return f"{float(text):.4g}" if len(text) > 8 and _is_number(text) else text


def _acc(value: float | None, std: float | None = None) -> str:
    if value is None:
        return ""
    return f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def plot_png(summary: Summary, file: BinaryIO) -> None:
    """Validation (and, lighter, test) accuracy of every completed job against each swept knob, with the mean
    validation accuracy per value as a line. The seed is left out when other knobs are swept."""
    from matplotlib.figure import Figure  # here: training imports this module, and draws nothing with it

    done = [job for job in summary.jobs if job.status == OK and job.val_acc is not None]
    knobs = ([k for k in summary.swept if k != "seed"] or summary.swept) if done else []
    cols = min(3, max(1, len(knobs)))
    rows = max(1, math.ceil(len(knobs) / cols))
    # At least 7 inches wide, so that the title fits even above one panel (it was clipped at 4.2).
    fig = Figure(figsize=(max(7.0, 4.2 * cols), 3.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if not knobs:
        axes[0].text(0.5, 0.5, "no completed job with a validation accuracy", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, key in zip(axes, knobs, strict=False):
        values = [job.overrides.get(key, "") for job in done]
        numeric = all(_is_number(v) for v in values)
        order = sorted(set(values), key=float if numeric else str)
        where = {v: (float(v) if numeric else i) for i, v in enumerate(order)}
        xs = [where[v] for v in values]
        ax.scatter(xs, [job.val_acc for job in done], label="validation", zorder=3)
        tests = [math.nan if job.get("test_acc") is None else job.get("test_acc") for job in done]
        ax.scatter(xs, tests, marker="x", color="gray", alpha=0.6, label="test")  # NaN: none drawn
        means = [
            statistics.fmean(j.val_acc for j, v in zip(done, values, strict=True) if v == o) for o in order
        ]
        ax.plot([where[o] for o in order], means, color="C0", alpha=0.6)
        if not numeric:
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set(xlabel=key, ylabel="accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[max(1, len(knobs)) :]:
        ax.set_axis_off()
    where = f"{summary.folder.parent.name}/{summary.folder.name}"
    fig.suptitle(f"{where}: accuracy by swept value\n{len(done)} of {len(summary.jobs)} jobs completed")
    fig.savefig(file, format="png", dpi=100)


def report(summary: Summary) -> str:
    """What the command prints: where the summary is and the best job by validation accuracy."""
    done = len(summary.jobs) - len(summary.failed)
    line = f"sweep summary: {summary.folder / 'summary.md'} ({done} of {len(summary.jobs)} jobs completed)"
    best = summary.jobs[0]
    if best.status == OK and best.val_acc is not None:
        setting = " ".join(f"{k}={best.overrides.get(k, '')}" for k in summary.swept)
        line += f"; best by validation accuracy: job {best.name} ({setting}) val_acc={best.val_acc:.4f}"
    return line


def failure_line(summary: Summary) -> str:
    first = summary.failed[0]
    return (
        f"{len(summary.failed)} of {len(summary.jobs)} jobs failed (job {first.name}: {first.error}); "
        f"the others are summarised in {summary.folder / 'summary.md'}"
    )
