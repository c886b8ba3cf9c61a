"""notebooks/train_kaggle_colab.ipynb, executed on the CPU with smoke-size parameters (as papermill would inject
them, after its parameters cell), so that it cannot rot: it trains, evaluates and visualises, and shows the
figures."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

NOTEBOOK = ROOT / "notebooks" / "train_kaggle_colab.ipynb"
SMOKE = [
    "data=synthetic",
    "data.synthetic.train_per_class=20",
    "data.synthetic.test_per_class=5",
    "data.val_size=50",
    "data.batch_size=25",
    "data.num_workers=0",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "aug=none",
    "trainer.max_epochs=1",
    "scheduler.warmup_epochs=0",
    "compile=false",
]


def parameters_cell_index(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def test_the_parameters_cell_holds_every_setting():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[parameters_cell_index(nb)].source
    for name in ("RECIPE", "DATA_ROOT", "GPUS", "OUTPUT_DIR", "INSTALL", "TENSORBOARD"):
        assert f"\n{name} = " in f"\n{params}", name
    later = "".join(c.source for c in nb.cells[parameters_cell_index(nb) + 1 :] if c.cell_type == "code")
    assert "experiment=" not in later and "data.root=" in later  # the recipe comes from the parameters only


def test_the_notebook_trains_evaluates_and_shows_figures_on_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    out = tmp_path / "out"
    injected = "\n".join(
        [
            f"RECIPE = {SMOKE!r}",
            "GPUS = 0",
            f"OUTPUT_DIR = {str(out)!r}",
            "INSTALL = False",
            "TENSORBOARD = False",
            "EVAL_BATCH_SIZE = 16",
        ]
    )
    nb.cells.insert(parameters_cell_index(nb) + 1, nbformat.v4.new_code_cell(injected))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["test_acc"] <= 1.0 and metrics["test_images"] == 50
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert evaluation["test_images"] == 50 and evaluation["test_acc"] == pytest.approx(metrics["test_acc"])
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard events were written"
    assert list((out / "attention").glob("rollout*.png"))
    shown = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) >= 6 + 1  # the evaluation's six figures and the attention rollout
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
