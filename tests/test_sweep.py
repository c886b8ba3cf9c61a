"""Sweeps: real ``-m`` sweeps through the CLI (a 2x2 grid; seeds with jobs that fail at run time), the
summary of hand-made sweep folders, the ready hparams_search configs, and the TensorBoard events of a job."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config, run_module
from vit_cifar.config.schema import validate_config
from vit_cifar.sweep_summary import main as summary_main
from vit_cifar.sweeps.summary import summarise, validation_accuracy

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

FAST = [*TINY_MODEL, *QUIET, *SYNTHETIC_SMALL, "trainer=cpu", "scheduler.warmup_epochs=0"]


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _metrics(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------- a 2x2 grid through the real CLI


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> tuple[Path, object]:
    """2 x 2 jobs of 3 epochs; every step logged, figures every 2 epochs (so at epochs 2 and 3, the last)."""
    folder = tmp_path_factory.mktemp("grid")
    result = run_module(
        "vit_cifar.train",
        [
            "-m",
            "aug.mixup_alpha=0,0.5",
            "model.drop_path_rate=0,0.1",
            *FAST,
            "trainer.max_epochs=3",
            "trainer.log_every_n_steps=1",
            "callbacks.tensorboard_figures.every_n_epochs=2",
            "callbacks.tensorboard_figures.num_images=6",
            f"hydra.sweep.dir={folder}",
        ],
    )
    return folder, result


def test_a_grid_sweep_gives_one_folder_per_job_and_a_summary_ranked_by_validation(grid_sweep):
    folder, result = grid_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    assert all((folder / job / "metrics.json").is_file() for job in jobs)

    rows = _rows(folder / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert list(rows[0])[:5] == ["rank", "job", "status", "aug.mixup_alpha", "model.drop_path_rate"]
    assert {(r["aug.mixup_alpha"], r["model.drop_path_rate"]) for r in rows} == {
        ("0", "0"),
        ("0", "0.1"),
        ("0.5", "0"),
        ("0.5", "0.1"),
    }
    for row in rows:  # each row is its job's metrics.json
        metrics = _metrics(folder / row["job"])
        assert float(row["val_acc"]) == pytest.approx(validation_accuracy(metrics))
        assert float(row["test_acc"]) == pytest.approx(metrics["test_acc"])
        assert int(row["epochs"]) == metrics["epochs"] == 3
    vals = [float(r["val_acc"]) for r in rows]
    assert vals == sorted(vals, reverse=True) and [r["rank"] for r in rows] == ["1", "2", "3", "4"]

    md = (folder / "summary.md").read_text()
    assert md.count("| ok |") == 4 and "| aug.mixup_alpha | model.drop_path_rate |" in md
    with Image.open(folder / "summary.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 200
    assert not list(folder.glob(".*.partial"))  # written atomically
    assert f"sweep summary: {folder / 'summary.md'} (4 of 4 jobs completed)" in result.stdout
    console = result.stdout + result.stderr
    assert console.count("GPU available:") == 1  # the device banner once, not before every job
    assert all(f"#{k} : " in console for k in range(4))  # each job headed by its overrides


def test_a_sweep_job_writes_the_expected_tensorboard_events(grid_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder, result = grid_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    job = next(
        folder / r["job"]
        for r in _rows(folder / "summary.csv")
        if r["aug.mixup_alpha"] == "0.5" and r["model.drop_path_rate"] == "0.1"
    )
    events = EventAccumulator(str(job / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/loss_step",
        "train/lr/decay",
        "train/loss_epoch",
        "train/acc",
        "val/acc",
        "val/loss",
        "train/grad_norm",
    } <= scalars

    steps_per_epoch = len(events.Scalars("train/loss_step")) // 3
    grad = events.Scalars("train/grad_norm")
    assert [e.step for e in grad] == list(range(3 * steps_per_epoch))  # every step: log_every_n_steps=1
    # Before clipping: the norm is what clipping (trainer.gradient_clip_val=1.0) compares, so it can exceed 1.
    assert max(e.value for e in grad) > 1.0
    assert len(events.Scalars("val/acc")) == 3

    for tag in ("val/confusion_matrix", "val/predictions"):
        images = events.Images(tag)
        assert [i.step for i in images] == [2 * steps_per_epoch, 3 * steps_per_epoch], tag  # epochs 2 and 3
        assert images[-1].encoded_image_string.startswith(b"\x89PNG")

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert (
        hparams["aug.mixup_alpha"].number_value == 0.5 and hparams["model.drop_path_rate"].number_value == 0.1
    )
    assert hparams["model"].string_value == "VisionTransformer" and hparams["data.root"].string_value
    assert "data.cache_dir" not in hparams and "data.mean" not in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"whole_run/val_acc_best", "whole_run/test_acc"}
    final = events.Scalars("whole_run/test_acc")[-1].value
    assert final == pytest.approx(_metrics(job)["test_acc"])


# ------------------------------------------------ seeds, and jobs that fail at run time, through the real CLI


@pytest.fixture(scope="module")
def seed_sweep(tmp_path_factory) -> tuple[Path, object]:
    """2 seeds x 2 sources; data.source=folder with a data.root that does not exist fails as the job loads its
    data (the pre-flight check cannot know), so 2 of the 4 jobs fail."""
    folder = tmp_path_factory.mktemp("seeds")
    missing = folder.parent / "no_such_image_folder"
    result = run_module(
        "vit_cifar.train",
        [
            "-m",
            "seed=0,1",
            "data.source=synthetic,folder",
            f"data.root={missing}",
            *FAST,
            "trainer.max_epochs=1",
            "~logger",
            "callbacks.lr_monitor=null",
            "callbacks.tensorboard_figures=null",
            f"hydra.sweep.dir={folder}",
        ],
    )
    return folder, result


def test_jobs_that_fail_at_run_time_are_listed_with_their_error_and_the_rest_summarised(seed_sweep):
    folder, result = seed_sweep
    assert result.returncode == 1, result.stderr[-3000:]
    rows = _rows(folder / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert {r["data.source"] for r in rows[:2]} == {"synthetic"} and {r["data.source"] for r in rows[2:]} == {
        "folder"
    }
    for row in rows[2:]:
        assert row["error"].startswith("DataError: data.root=") and "is not an image folder" in row["error"]
        assert row["rank"] == row["val_acc"] == ""
        error_file = (folder / row["job"] / "error.txt").read_text()
        assert (
            error_file.splitlines()[0] == row["error"] and not (folder / row["job"] / "metrics.json").exists()
        )
    md = (folder / "summary.md").read_text()
    assert md.count("**failed**: DataError: data.root=") == 2 and md.count("| ok |") == 2
    # The sweep went on past the first failure (job 1) to jobs 2 and 3, then ended with one line and exit 1.
    assert (folder / "3" / "error.txt").is_file() and (folder / "2" / "metrics.json").is_file()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 4 jobs failed (job 1: DataError: data.root=") and "summary.md" in last


def test_a_seed_sweep_reports_mean_and_std_over_seeds(seed_sweep):
    folder, _ = seed_sweep
    groups = {r["data.source"]: r for r in _rows(folder / "summary_seeds.csv")}
    ok = groups["synthetic"]
    vals = [validation_accuracy(_metrics(folder / job)) for job in ("0", "2")]  # seeds 0 and 1, synthetic
    tests = [_metrics(folder / job)["test_acc"] for job in ("0", "2")]
    assert ok["seeds"] == "0 1" and ok["n"] == "2" and ok["failed"] == "0"
    assert float(ok["val_acc_mean"]) == pytest.approx(statistics.fmean(vals))
    assert float(ok["val_acc_std"]) == pytest.approx(statistics.stdev(vals))
    assert float(ok["test_acc_mean"]) == pytest.approx(statistics.fmean(tests))
    assert (
        groups["folder"]["n"] == "0"
        and groups["folder"]["failed"] == "2"
        and groups["folder"]["val_acc_mean"] == ""
    )
    md = (folder / "summary.md").read_text()
    assert "## Over seeds" in md and f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}" in md


# ----------------------------------------------------------------------- the summary of hand-made folders


def make_sweep(folder: Path, jobs: list[tuple[list[str], dict | None, str | None]]) -> Path:
    """A sweep folder as Hydra and train leave it: .hydra/overrides.yaml, metrics.json or error.txt."""
    for num, (overrides, metrics, error) in enumerate(jobs):
        job = folder / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if metrics is not None:
            (job / "metrics.json").write_text(json.dumps({"epochs": 10, "wall_s": 100.0, **metrics}))
        if error is not None:
            (job / "error.txt").write_text(error + "\n\nTraceback (most recent call last): ...\n")
    return folder


def test_the_summary_ranks_by_validation_accuracy_never_by_test(tmp_path):
    make_sweep(
        tmp_path,
        [
            (["optim.lr=1e-3", "data=synthetic"], {"val_acc_best": 0.70, "test_acc": 0.90}, None),
            (["optim.lr=2e-3", "data=synthetic"], {"val_acc_best": 0.80, "test_acc": 0.60}, None),
            (["optim.lr=3e-3", "data=synthetic"], None, "TrainingError: the training loss is nan at step 12"),
            (["optim.lr=4e-3", "data=synthetic"], None, None),  # killed: neither file
            (["optim.lr=5e-3", "data=synthetic"], {"val_acc_last_epoch": 0.75, "test_acc": 0.99}, None),
        ],
    )
    summary = summarise(tmp_path)
    assert summary.swept == ["optim.lr"] and summary.fixed == {"data": "synthetic"}
    rows = _rows(tmp_path / "summary.csv")
    assert [r["optim.lr"] for r in rows] == [
        "0.002",
        "0.005",
        "0.001",
        "0.003",
        "0.004",
    ]  # as Hydra writes them
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "no result"]
    assert rows[3]["error"] == "TrainingError: the training loss is nan at step 12"  # the first line only
    assert "killed" in rows[4]["error"] and not (tmp_path / "summary_seeds.csv").exists()
    assert "Every job: `data=synthetic`" in (tmp_path / "summary.md").read_text()


def test_over_seeds_gives_mean_and_sample_std_for_each_setting(tmp_path):
    val = {("0", "0"): 0.60, ("0", "1"): 0.62, ("0", "2"): 0.64, ("0.2", "0"): 0.70, ("0.2", "1"): 0.66}
    jobs = [
        ([f"aug.mixup_alpha={a}", f"seed={s}"], {"val_acc_best": v, "test_acc": v - 0.01}, None)
        for (a, s), v in val.items()
    ]
    jobs.append((["aug.mixup_alpha=0.2", "seed=2"], None, "DataError: cannot decode image x.png"))
    summary = summarise(make_sweep(tmp_path, jobs))
    best, other = summary.seed_groups
    assert (best["aug.mixup_alpha"], best["seeds"], best["n"], best["failed"]) == ("0.2", "0 1", 2, 1)
    assert best["val_acc_mean"] == pytest.approx(0.68) and best["val_acc_std"] == pytest.approx(0.02828427)
    assert (other["aug.mixup_alpha"], other["n"]) == ("0", 3)
    assert other["val_acc_mean"] == pytest.approx(0.62) and other["val_acc_std"] == pytest.approx(0.02)
    assert other["test_acc_mean"] == pytest.approx(0.61) and other["wall_s_mean"] == pytest.approx(100.0)
    rows = _rows(tmp_path / "summary_seeds.csv")
    assert [r["aug.mixup_alpha"] for r in rows] == ["0.2", "0"] and float(
        rows[1]["val_acc_std"]
    ) == pytest.approx(0.02)


def test_a_job_rerun_after_failing_counts_by_its_newest_outcome(tmp_path):
    import os

    make_sweep(
        tmp_path,
        [(["seed=0"], {"val_acc_best": 0.5}, "DataError: old"), (["seed=1"], {"val_acc_best": 0.4}, None)],
    )
    os.utime(tmp_path / "0" / "error.txt", (1, 1))  # the error is older than the metrics of the rerun
    assert [job.status for job in summarise(tmp_path).jobs] == ["ok", "ok"]


def test_the_summary_command_refuses_what_is_not_a_sweep_folder(tmp_path, capsys):
    for folder, words in ((tmp_path / "nope", "is not a folder"), (tmp_path, "holds no job folders")):
        with pytest.raises(SystemExit) as stop:
            summary_main([str(folder)])
        assert stop.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written

    make_sweep(
        tmp_path, [(["seed=0"], {"val_acc_best": 0.5, "test_acc": 0.5}, None), (["seed=1"], None, "X: y")]
    )
    summary_main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "(1 of 2 jobs completed)" in out and "1 of 2 jobs failed (job 1: X: y)" in out
    assert {p.name for p in tmp_path.glob("summary*")} == {
        "summary.csv",
        "summary.md",
        "summary.png",
        "summary_seeds.csv",
    }


# ------------------------------------------------------------------------------ the ready sweep configs


def _sweep_jobs(params: dict) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def test_the_regularisation_grid_sweeps_valid_values(tmp_path):
    cfg = compose_config(["hparams_search=regularisation"], tmp_path, config_name="train")
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    assert hydra_cfg.mode.name == "MULTIRUN" and hydra_cfg.sweeper._target_.endswith("BasicSweeper")
    jobs = _sweep_jobs(dict(hydra_cfg.sweeper.params))
    assert len(jobs) == 24
    keys = {o.split("=")[0] for o in jobs[0]}
    assert keys == {"aug.mixup_alpha", "aug.cutmix_alpha", "model.drop_path_rate", "optim.weight_decay"}
    validate_config(cfg)
    for (
        overrides
    ) in jobs:  # every job's values pass the schema (the pre-flight check sees only the command line)
        validate_config(compose_config(["hparams_search=regularisation", *overrides], tmp_path))


def test_the_optuna_search_maximises_validation_accuracy(tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper",
        reason="hydra-optuna-sweeper is not installed "
        "(pip install -e '.[optuna]'): the config needs the plugin to compose",
    )
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(["hparams_search=regularisation_optuna"], tmp_path)
    sweeper = HydraConfig.get().sweeper
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    knobs = {
        "aug.mixup_alpha",
        "aug.cutmix_alpha",
        "aug.erasing_p",
        "aug.label_smoothing",
        "model.drop_rate",
        "model.drop_path_rate",
        "optim.weight_decay",
    }
    assert set(sweeper.params) == knobs
    validate_config(cfg)


def test_without_the_optuna_plugin_the_optuna_search_says_how_to_install_it(capsys):
    from vit_cifar.config.entry import preflight
    from vit_cifar.training.run import check_train_command

    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("hydra-optuna-sweeper is installed here")
    with pytest.raises(SystemExit) as stop:
        preflight("train", ["hparams_search=regularisation_optuna"], check_train_command)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'hydra/sweeper/optuna'" in err
    assert err.endswith("(install the plugin: pip install -e '.[optuna]')")


def test_the_objective_is_the_validation_accuracy_never_test():
    assert validation_accuracy({"val_acc_best": 0.8, "val_acc_last_epoch": 0.7, "test_acc": 0.9}) == 0.8
    assert validation_accuracy({"val_acc_last_epoch": 0.7, "test_acc": 0.9}) == 0.7
    assert validation_accuracy({"test_acc": 0.9}) is None


def test_damaged_job_folders_are_listed_as_failed_and_the_others_summarised(tmp_path, capsys):
    make_sweep(tmp_path, [(["seed=0"], {"val_acc_best": 0.5, "test_acc": 0.5}, None)] * 4)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("not: [valid")  # broken YAML
    (tmp_path / "2" / "metrics.json").write_text('{"val_acc_best": 0.5')  # cut short
    (tmp_path / "3" / "metrics.json").write_text("[1, 2]")  # JSON, but not the metrics
    summary_main([str(tmp_path)])
    assert "(1 of 4 jobs completed)" in capsys.readouterr().out
    rows = {r["job"]: r for r in _rows(tmp_path / "summary.csv")}
    assert rows["0"]["status"] == "ok"
    assert rows["1"]["status"] == "failed" and rows["1"]["error"].startswith(
        ".hydra/overrides.yaml cannot be read"
    )
    assert rows["2"]["error"].startswith("metrics.json does not parse")
    assert rows["3"]["error"] == "metrics.json is not a JSON object"
