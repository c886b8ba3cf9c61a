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
from typing import Any, BinaryIO

from omegaconf import OmegaConf

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.errors import VitCifarError, first_line

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
OK, FAILED, NO_RESULT = "ok", "failed", "no result"


def validation_accuracy(metrics: dict) -> float | None:
    """The accuracy a sweep ranks and a sweeper maximises: the selected (best) epoch's validation accuracy,
    else the last epoch's; ``None`` without a validation split. Never the test accuracy."""
    value = metrics.get("val_acc_best", metrics.get("val_acc_last_epoch"))
    return None if value is None else float(value)


# ------------------------------------------------------------------------------------------ reading jobs


@dataclass
class Job:
    """One job folder of a sweep: its overrides (key -> value, as Hydra wrote them), outcome and metrics."""

    name: str
    overrides: dict[str, str]
    status: str
    metrics: dict = field(default_factory=dict)
    error: str = ""

    @property
    def val_acc(self) -> float | None:
        return validation_accuracy(self.metrics)

    @property
    def test_acc(self) -> float | None:
        return self.metrics.get("test_acc")


def read_jobs(folder: Path) -> list[Job]:
    """Every job folder under ``folder`` (a sweep's folder), in job order."""
    if not folder.is_dir():
        raise VitCifarError(
            f"{folder} is not a folder: give the folder of a sweep, e.g. outputs/multirun/<date>/<time>"
        )
    marks = sorted(
        folder.glob("**/.hydra/overrides.yaml"), key=lambda p: _natural(p.parent.parent.relative_to(folder))
    )
    jobs = [_read_job(mark.parent.parent, folder) for mark in marks if mark.parent.parent != folder]
    if not jobs:
        raise VitCifarError(
            f"{folder} holds no job folders (<job>/.hydra/overrides.yaml): give the folder of a -m sweep, "
            "e.g. outputs/multirun/<date>/<time>, not one job's folder or a single run's"
        )
    return jobs


def _read_job(job_dir: Path, sweep_dir: Path) -> Job:
    """The job in ``job_dir``; a file of it that cannot be read makes it a failed job that says which, so the
    summary still covers the others."""
    name = job_dir.relative_to(sweep_dir).as_posix()
    try:
        listed = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        if not isinstance(listed, list):
            raise ValueError("not a list of overrides")
        overrides = parse_overrides([str(line) for line in listed])
    except Exception as err:  # YAML, OmegaConf or Hydra's parser: all mean a damaged file
        return Job(name, {}, FAILED, error=f".hydra/overrides.yaml cannot be read ({first_line(err)[:160]})")
    try:
        return _job_outcome(job_dir, name, overrides)
    except (OSError, UnicodeDecodeError) as err:
        return Job(name, overrides, FAILED, error=f"cannot read its files ({first_line(err)[:160]})")


def _job_outcome(job_dir: Path, name: str, overrides: dict[str, str]) -> Job:
    metrics_file, error_file = job_dir / METRICS_FILE, job_dir / ERROR_FILE
    # The newer of the two tells how the job last ended (a job rerun in its folder may leave the other).
    if error_file.is_file() and (
        not metrics_file.is_file() or error_file.stat().st_mtime >= metrics_file.stat().st_mtime
    ):
        first_line = next(iter(error_file.read_text().splitlines()), "") or f"(empty {ERROR_FILE})"
        return Job(name, overrides, FAILED, error=first_line)
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            return Job(name, overrides, FAILED, error=f"{metrics_file.name} does not parse: {err}")
        if not isinstance(metrics, dict):
            return Job(name, overrides, FAILED, error=f"{metrics_file.name} is not a JSON object")
        return Job(name, overrides, OK, metrics=metrics)
    return Job(
        name, overrides, NO_RESULT, error=f"no {METRICS_FILE} or {ERROR_FILE}: still running, or killed"
    )


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """``["aug.mixup_alpha=0.2", "+x=1"]`` -> ``{"aug.mixup_alpha": "0.2", "x": "1"}``, by Hydra's parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(lines)
    return {o.key_or_group: "null" if o.is_delete() else o.get_value_element_as_str() for o in parsed}


def _natural(path: Path | str) -> list:
    """Sort key that puts job 10 after job 9 (and seed 10 after seed 9)."""
    text = path.as_posix() if isinstance(path, Path) else path
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# ------------------------------------------------------------------------------------------- the summary


@dataclass
class Summary:
    folder: Path
    jobs: list[Job]  # ranked: completed by validation accuracy, best first; then failed and unfinished
    swept: list[str]  # override keys whose value differs between jobs
    fixed: dict[str, str]  # overrides every job shares
    seed_groups: list[dict] = field(default_factory=list)  # over seeds, when "seed" is swept

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if job.status != OK]


def summarise(folder: Path) -> Summary:
    """Read a sweep's folder and write its summary files into it (each atomically: temp file, then rename)."""
    folder = Path(folder)
    jobs = read_jobs(folder)
    swept, fixed = split_keys(jobs)
    summary = Summary(folder, rank(jobs), swept, fixed)
    if "seed" in swept:
        summary.seed_groups = over_seeds(summary.jobs, [k for k in swept if k != "seed"])
    write_atomic(folder / "summary.csv", to_csv(job_rows(summary)))
    write_atomic(folder / "summary.md", markdown(summary))
    write_atomic(folder / "summary.png", lambda file: plot_png(summary, file))
    if summary.seed_groups:
        write_atomic(folder / "summary_seeds.csv", to_csv(summary.seed_groups))
    return summary


def split_keys(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """The swept keys (values differ between jobs, in the order they first appear) and the fixed overrides.
    A single job has no differences: its overrides count as swept."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    swept = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    if len(jobs) == 1:
        return keys, {}
    return swept, {k: jobs[0].overrides[k] for k in keys if k not in swept}


def rank(jobs: list[Job]) -> list[Job]:
    """Completed jobs by validation accuracy, best first (ties and jobs without validation keep job order),
    then the failed and unfinished ones. The test accuracy plays no part."""
    done = [job for job in jobs if job.status == OK]
    with_val = sorted((job for job in done if job.val_acc is not None), key=lambda job: -job.val_acc)
    return with_val + [job for job in done if job.val_acc is None] + [job for job in jobs if job.status != OK]


def over_seeds(jobs: list[Job], keys: list[str]) -> list[dict]:
    """Mean and sample standard deviation over seeds for each setting of ``keys`` (the swept keys but seed),
    best mean validation accuracy first. One seed gives no standard deviation (``None``)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, "") for k in keys), []).append(job)
    rows = []
    for setting, members in groups.items():
        done = [job for job in members if job.status == OK]
        row: dict[str, Any] = dict(zip(keys, setting, strict=True))
        row["seeds"] = " ".join(sorted((job.overrides.get("seed", "") for job in done), key=_natural))
        row["n"] = len(done)
        row["failed"] = len(members) - len(done)
        for name, values in (
            ("val_acc", [j.val_acc for j in done]),
            ("test_acc", [j.test_acc for j in done]),
            ("epochs", [j.metrics.get("epochs") for j in done]),
            ("wall_s", [j.metrics.get("wall_s") for j in done]),
        ):
            mean, std = mean_std(values)
            row[f"{name}_mean"], row[f"{name}_std"] = mean, std
        rows.append(row)
    return sorted(rows, key=lambda r: -r["val_acc_mean"] if r["val_acc_mean"] is not None else math.inf)


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values that are there; ``None`` where undefined."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else None)


# --------------------------------------------------------------------------------------------- the files


def job_rows(summary: Summary) -> list[dict]:
    """``summary.csv``'s rows, ranked: a rank for completed jobs, the swept values, the numbers, the error."""
    return [
        {
            "rank": i if job.status == OK else "",
            "job": job.name,
            "status": job.status,
            **{k: job.overrides.get(k, "") for k in summary.swept},
            "val_acc": job.val_acc,
            "test_acc": job.test_acc,
            "epochs": job.metrics.get("epochs"),
            "wall_s": job.metrics.get("wall_s"),
            "error": job.error,
        }
        for i, job in enumerate(summary.jobs, 1)
    ]


def to_csv(rows: list[dict]) -> str:
    """The rows (dicts with the same keys) as CSV under a header; a missing value is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def markdown(summary: Summary) -> str:
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
    rows = [
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
        for r in job_rows(summary)
    ]
    lines += _table(header, rows)
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
        rows = [
            [
                *(_short(g[k]) for k in keys),
                g["seeds"],
                str(g["n"]),
                str(g["failed"]),
                _pm(g["val_acc_mean"], g["val_acc_std"]),
                _pm(g["test_acc_mean"], g["test_acc_std"]),
                _duration(g["wall_s_mean"]),
            ]
            for g in summary.seed_groups
        ]
        lines += _table([*keys, "seeds", "n", "failed", "val acc", "test acc", "mean wall time"], rows)
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda text: str(text).replace("|", "\\|")
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(map(cell, row)) + " |" for row in rows
    ]


def _short(text: str) -> str:
    """A value as written, but a float with many digits (Optuna's) to 4 significant ones, for reading."""
    return f"{float(text):.4g}" if len(text) > 8 and _is_number(text) else text


def _acc(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def plot_png(summary: Summary, file: BinaryIO) -> None:
    """Validation (and, lighter, test) accuracy of every completed job against each swept knob, with the mean
    validation accuracy per value as a line. The seed is left out when other knobs are swept."""
    from matplotlib.figure import Figure  # here: training imports this module, and draws nothing with it

    knobs = [k for k in summary.swept if k != "seed"] or summary.swept
    done = [job for job in summary.jobs if job.status == OK and job.val_acc is not None]
    cols = min(3, max(1, len(knobs)))
    rows = max(1, math.ceil(len(knobs) / cols))
    # At least 7 inches wide, so that the title fits even above one panel (it was clipped at 4.2).
    fig = Figure(figsize=(max(7.0, 4.2 * cols), 3.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    if not done or not knobs:
        axes[0].text(0.5, 0.5, "no completed job with a validation accuracy", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, key in zip(axes, knobs if done else [], strict=False):
        values = [job.overrides.get(key, "") for job in done]
        numeric = all(_is_number(v) for v in values)
        order = sorted(set(values), key=float if numeric else str)
        where = {v: (float(v) if numeric else i) for i, v in enumerate(order)}
        xs = [where[v] for v in values]
        ax.scatter(xs, [job.val_acc for job in done], label="validation", zorder=3)
        tests = [(x, job.test_acc) for x, job in zip(xs, done, strict=True) if job.test_acc is not None]
        if tests:
            ax.scatter(*zip(*tests, strict=True), marker="x", color="gray", alpha=0.6, label="test")
        means = [
            statistics.fmean(j.val_acc for j, v in zip(done, values, strict=True) if v == o) for o in order
        ]
        ax.plot([where[o] for o in order], means, color="C0", alpha=0.6)
        if not numeric:
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(knobs) if done else 1 :]:
        ax.set_axis_off()
    where = f"{summary.folder.parent.name}/{summary.folder.name}"
    fig.suptitle(f"{where}: accuracy by swept value\n{len(done)} of {len(summary.jobs)} jobs completed")
    fig.savefig(file, format="png", dpi=100)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def report(summary: Summary) -> str:
    """What the command prints: where the summary is and the best job by validation accuracy."""
    done = [job for job in summary.jobs if job.status == OK]
    line = (
        f"sweep summary: {summary.folder / 'summary.md'} ({len(done)} of {len(summary.jobs)} jobs completed)"
    )
    best = summary.jobs[0] if done and summary.jobs[0].val_acc is not None else None
    if best is not None:
        setting = " ".join(f"{k}={best.overrides.get(k, '')}" for k in summary.swept)
        line += f"; best by validation accuracy: job {best.name} ({setting}) val_acc={best.val_acc:.4f}"
    return line


def failure_line(summary: Summary) -> str:
    first = summary.failed[0]
    return (
        f"{len(summary.failed)} of {len(summary.jobs)} jobs failed (job {first.name}: {first.error}); "
        f"the others are summarised in {summary.folder / 'summary.md'}"
    )
