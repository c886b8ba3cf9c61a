"""The package's layers (docs/architecture.md): every import between the package's parts goes down this list,
never up or sideways into a cycle, so a config travelling through a command only ever goes down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vit_cifar"

# Bottom first. A part is a top-level module or a subpackage of vit_cifar.
LAYERS = [
    {"errors"},
    {"compat"},
    {"devices"},
    {"models"},
    {"data"},
    {"checkpoints"},
    {"sweeps"},
    {"config"},
    {"inference"},
    {"analysis"},
    {"training"},
    {"bench"},
    {"train", "evaluate", "visualize", "predict", "export", "benchmark", "sweep_summary"},
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """``vit_cifar.training.run`` -> ``training``; ``vit_cifar.errors`` -> ``errors``."""
    return module.split(".")[1]


def imports(source: str) -> set[str]:
    """Every ``vit_cifar`` module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "vit_cifar":  # from vit_cifar import training
            found |= {f"vit_cifar.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vit_cifar."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vit_cifar.")}
    return found


def upward_imports(files: dict[str, str]) -> list[str]:
    """``importer -> imported`` for each import from a part to one of its own layer or above."""
    wrong = []
    for name, source in files.items():
        here = part_of(name)
        for imported in imports(source):
            there = part_of(imported)
            if there != here and LEVEL[there] >= LEVEL[here]:
                wrong.append(f"{name} -> {imported}")
    return sorted(wrong)


def package_files() -> dict[str, str]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if dotted != "vit_cifar.__init__":
            files[dotted.removesuffix(".__init__")] = path.read_text()
    return files


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(name) for name in package_files()}
    assert parts == set(LEVEL), f"place these in LAYERS and docs/architecture.md: {parts ^ set(LEVEL)}"


def test_imports_only_go_down_the_layers():
    assert upward_imports(package_files()) == []


def test_an_import_up_the_layers_or_within_a_layer_is_found():
    files = {
        "vit_cifar.checkpoints.loading": "from vit_cifar.training.module import ClassifierModule\n",
        "vit_cifar.train": "def f():\n    import vit_cifar.evaluate\n",
        "vit_cifar.training.run": "from vit_cifar.checkpoints.atomic import write_atomic\n",
        "vit_cifar.models.vit": "from vit_cifar import data\n",
    }
    assert upward_imports(files) == [
        "vit_cifar.checkpoints.loading -> vit_cifar.training.module",
        "vit_cifar.models.vit -> vit_cifar.data",
        "vit_cifar.train -> vit_cifar.evaluate",
    ]
