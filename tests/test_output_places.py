"""Output places are checked before any work, in every command: a file where a folder is wanted (or the
reverse), a place under a file, and a place this user cannot write each give one line naming the setting,
exit code 2, and nothing written; and every command refuses an unknown key in one line."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from conftest import compose_config, run_module
from vit_cifar.config.entry import check_output_place, preflight
from vit_cifar.errors import ConfigError
from vit_cifar.training.run import check_train_command


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: read-only permissions, or (as root, whom permissions do
    not stop) sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        yield folder
        folder.chmod(stat.S_IRWXU)
        return
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no unwritable folder to try here")


def test_each_kind_of_bad_output_place_is_named(tmp_path: Path, unwritable: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cases = [
        (a_file, True, f"output_dir={a_file} is a file, not a folder"),
        (tmp_path, False, f"output_dir={tmp_path} is a folder: give a file name"),
        (
            a_file / "sub" / "x.json",
            False,
            f"output_dir={a_file / 'sub' / 'x.json'} lies under {a_file}, which",
        ),
        (unwritable / "new", True, f"output_dir={unwritable / 'new'} cannot be written"),
    ]
    for path, folder, message in cases:
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")) as refused:
            check_output_place(path, "output_dir", folder=folder)
        assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    assert a_file.read_text() == "mine"
    fresh = tmp_path / "new" / "deeper"
    assert check_output_place(fresh, "output_dir", folder=True) == fresh
    assert not fresh.exists()  # checking writes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] + (
        ["read-only"] if unwritable.parent == tmp_path else []
    )


def test_a_training_into_a_run_folder_that_is_a_file_stops_in_the_preflight(tmp_path, capsys) -> None:
    a_file = tmp_path / "run"
    a_file.write_text("mine")
    for argv, key in (
        ([f"hydra.run.dir={a_file}"], "hydra.run.dir"),
        (["-m", f"hydra.sweep.dir={a_file}"], "hydra.sweep.dir"),
    ):
        with pytest.raises(SystemExit) as stop:
            preflight("train", argv, check_train_command)
        assert stop.value.code == 2
        assert (
            capsys.readouterr().err
            == f"error: {key}={a_file} is a file, not a folder: give a folder to write into\n"
        )
    assert a_file.read_text() == "mine"


def test_evaluate_visualize_and_predict_check_their_output_before_loading_anything(tmp_path) -> None:
    from vit_cifar.analysis.evaluation import evaluate
    from vit_cifar.analysis.explain import visualize
    from vit_cifar.predict import predict

    missing_ckpt = tmp_path / "not-read.ckpt"
    missing_ckpt.write_bytes(b"never opened: the output place is refused first")
    a_file = tmp_path / "taken"
    a_file.write_text("mine")
    a_folder = tmp_path / "predictions.json"
    a_folder.mkdir()
    jobs = [
        (evaluate, "eval", [f"output_dir={a_file}"], "output_dir="),
        (visualize, "visualize", [f"output_dir={a_file}"], "output_dir="),
        (predict, "predict", [f"inputs={tmp_path}", f"output={a_folder}"], "output="),
    ]
    for job, config, overrides, key in jobs:
        cfg = compose_config([f"ckpt_path={missing_ckpt}", *overrides], tmp_path, config_name=config)
        with pytest.raises(ConfigError, match=f"^{key}"):
            job(cfg)
    assert a_file.read_text() == "mine" and not any(a_folder.iterdir())


def test_the_benchmark_checks_its_results_folder_first(tmp_path, capsys) -> None:
    from vit_cifar.benchmark import main

    a_file = tmp_path / "results"
    a_file.write_text("mine")
    with pytest.raises(SystemExit) as stop:
        main(["--tiny", "--out", str(a_file)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: --out={a_file} is a file, not a folder")


@pytest.mark.parametrize("config", ["eval", "visualize", "predict", "export"])
def test_every_command_refuses_an_unknown_key_in_one_line(config, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        preflight(config, ["batch_sise=3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown key batch_sise: check its spelling")


@pytest.mark.e2e
def test_through_the_command_line_too(tmp_path) -> None:
    result = run_module("vit_cifar.evaluate", ["batch_sise=3"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: unknown key batch_sise")
    assert list(tmp_path.iterdir()) == []
