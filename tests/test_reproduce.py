"""scripts/reproduce.sh end to end on a tiny model, and the experiment=fast recipe through training."""

import json
import os
import subprocess
import sys

import pytest

from conftest import QUIET, ROOT, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

SCRIPT = ROOT / "scripts" / "reproduce.sh"


def _reproduce(tmp_path, env: dict, args: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "run"),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_reproduce_trains_tests_and_writes_one_results_file(tmp_path):
    result = _reproduce(
        tmp_path,
        {"EPOCHS": "1"},
        [
            *SYNTHETIC_SMALL,
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
            "data.val_size=0",
            "callbacks.lr_monitor=null",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["recipe"] == "experiment=seed" and results["epochs"] == 1 and results["fast_path"] is True
    trained = results["train_and_test"]
    assert trained["epochs"] == 1 and 0.0 <= trained["test_acc"] <= 1.0 and trained["compile"] is False
    assert results["train_and_test_wall_s"] >= 0 and len(results["git"]["sha"]) == 40
    evaluation = results["evaluation"]  # the evaluation of the trained checkpoint, on the same data
    assert (
        evaluation["test_acc"] == pytest.approx(trained["test_acc"], abs=1e-6)
        and evaluation["test_images"] == trained["test_images"]
    )
    assert (tmp_path / "run" / "evaluate" / "report.md").is_file()
    assert result.stdout.strip().splitlines()[-1].startswith("reproduce: test_acc=")


def test_reproduce_refuses_a_bad_epoch_count_in_one_line(tmp_path):
    result = _reproduce(tmp_path, {"EPOCHS": "ten"}, [])
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "error: EPOCHS=ten must be a whole number of epochs, at least 1"
    )


def test_fast_experiment_is_the_seed_recipe_with_the_speed_switches(tmp_path):
    seed, fast = compose_config(["experiment=seed"], tmp_path), compose_config(["experiment=fast"], tmp_path)
    assert fast.model == seed.model and fast.aug == seed.aug  # the same ViT-Tiny and regularisation
    assert fast.data.device_aug and fast.compile is True and fast.trainer.precision == "bf16-mixed"
    assert (
        fast.data.batch_size == 4 * seed.data.batch_size and fast.optim.lr == 2 * seed.optim.lr
    )  # sqrt scaling
    assert fast.trainer.max_epochs < seed.trainer.max_epochs and fast.data.val_size == 0
    # one batch of everything on CPU (compiling and bf16 are the GPU's; the switch paths are tested elsewhere)
    cfg = compose_config(
        [
            "experiment=fast",
            "debug=fdr",
            *SYNTHETIC_SMALL,
            *TINY_MODEL,
            *QUIET,
            "trainer=cpu",
            "compile=false",
            "data.batch_size=16",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test_acc"] <= 1.0
