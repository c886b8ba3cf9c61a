"""The notebook's install cell reads the version floors from pyproject.toml (one list) and names every
preinstalled package older than its floor, which pip then upgrades."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import pytest
import tomllib
from packaging.requirements import Requirement

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "train_kaggle_colab.ipynb"
DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.fixture
def cell() -> dict:
    """The install cell's names, run as the notebook runs it with INSTALL = False."""
    sources = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"]]
    [source] = [s for s in sources if "def below_floor" in s]
    names = {"INSTALL": False, "PROJECT_URL": ""}
    exec(compile(source, str(NOTEBOOK), "exec"), names)
    return names


def test_the_install_cell_names_each_package_older_than_pyprojects_floor(cell, tmp_path):
    assert cell["below_floor"](ROOT) == []  # the versions installed here meet every floor
    old = {"torch": "2.5.1+cu121", "torchvision": "0.20.1+cu121"}
    cell["version"] = lambda name: old.get(name) or version(name)
    assert cell["below_floor"](ROOT) == [  # as on a Kaggle or Colab image with an older PyTorch
        f"torch 2.5.1+cu121 (needs {Requirement(DEPENDENCIES[0]).specifier})",
        f"torchvision 0.20.1+cu121 (needs {Requirement(DEPENDENCIES[1]).specifier})",
    ]
    cell["version"] = lambda name: "0.0"
    assert cell["below_floor"](ROOT) == [
        f"{r.name} 0.0 (needs {r.specifier})" for r in map(Requirement, DEPENDENCIES)
    ]
    # the floors come from the checkout's pyproject.toml, whatever it says; a package not installed is pip's
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["rich>=0", "torch>=99", "absent>=1"]\n'
    )
    cell["version"] = lambda name: {"rich": "13.0", "torch": "2.14.1"}.get(name) or missing(name)
    assert cell["below_floor"](tmp_path) == ["torch 2.14.1 (needs >=99)"]


def missing(name: str):
    raise PackageNotFoundError(name)


def test_the_floors_admit_the_device_machines_versions():
    floors = {r.name: r.specifier for r in map(Requirement, DEPENDENCIES)}
    assert floors["torch"].contains("2.11.0+cu130") and floors["lightning"].contains("2.6.0")
