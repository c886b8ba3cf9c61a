"""Every ``python -m vit_cifar.<command>`` in the README and docs/ as written: each Hydra command's overrides
compose and pass the command's pre-flight (the same check that runs before a job starts), the benchmark's
arguments parse, and the documented refusals are refused. Placeholders (``<file>``, ``/path/to/...``) stand for
a file the user has, so they are given existing files here; nothing is trained."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, as_on_a_t4
from vit_cifar.config.entry import preflight
from vit_cifar.training.run import check_train_command

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HYDRA_COMMANDS = {"train": "train", "evaluate": "eval", "visualize": "visualize", "predict": "predict"}
HYDRA_COMMANDS["export"] = "export"
# Commands the docs show to illustrate a refusal, and a word of the one line each must give.
DOCUMENTED_REFUSALS = {"optim.lr=0": "optim.lr", "optim.lrr=1e-3": "unknown key optim.lrr"}
# Optional Hydra plugins (pyproject extras): without them, the command must say how to install them.
NEEDS_PLUGIN = {"hydra/launcher=slurm": "slurm", "hparams_search=regularisation_optuna": "optuna"}
COMMAND = re.compile(r"python -m vit_cifar\.(\w+)([^`|\n]*)")


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, command, arguments) for every command in the docs, a continued line (``\\``) joined."""
    found, seen = [], set()
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for match in COMMAND.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if match.group(1, 2) in seen:  # the same command shown twice is checked once
                continue
            seen.add(match.group(1, 2))
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1), match.group(2).strip()))
    return found


def as_run(arguments: str, tmp: Path) -> list[str]:
    """The arguments with each placeholder replaced by what a user would have: an existing checkpoint file, a
    run folder holding ``checkpoints/last.ckpt``, a path for any other ``<...>``; optional parts (``[key=...]``,
    ``...``, ``<the same overrides>``) left out."""
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "last.ckpt").touch()
    (tmp / "model.ckpt").touch()
    given = {
        "ckpt_path": str(tmp / "model.ckpt"),
        "--ckpt": str(tmp / "model.ckpt"),
        "hydra.run.dir": str(run),
    }
    arguments = os.path.expandvars(arguments)  # as the shell does: ${SLURM_JOB_ID} in docs/scaling.md
    # "key=<a thing>" and "--flag <a thing>" become one token each; a free-standing "<...>" is left out
    arguments = re.sub(r"(--[\w-]+) <", r"\1=<", arguments)
    arguments = re.sub(r"=<([^>]*)>", lambda m: "=<" + m.group(1).replace(" ", "_") + ">", arguments)
    arguments = re.sub(r"(^|\s)<[^>]*>", " ", arguments)
    tokens = [t for t in shlex.split(arguments, comments=True) if t != "..." and not t.startswith("[")]
    out = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep and ("<" in value or value == "..."):
            token = f"{key}={given.get(key, '/path/to/' + re.sub(r'[^A-Za-z0-9_.-]', '', value))}"
        out.append(token)
    return out


COMMANDS = documented_commands()


def test_the_docs_show_every_command():
    shown = {command for _, command, _ in COMMANDS}
    assert shown >= {*HYDRA_COMMANDS, "benchmark", "sweep_summary"}
    for command in shown:
        assert importlib.util.find_spec(f"vit_cifar.{command}") is not None, f"python -m vit_cifar.{command}"


@pytest.mark.parametrize(("where", "command", "arguments"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_documented_command_runs_as_written(where, command, arguments, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run folder or output lands here, never in the checkout
    monkeypatch.setenv("SLURM_JOB_ID", "1234")  # docs/scaling.md's SLURM script names its run folder by it
    argv = as_run(arguments, tmp_path)
    if command == "benchmark":
        from vit_cifar.benchmark import parse_args

        parse_args(argv)
        return
    if command not in HYDRA_COMMANDS:
        return  # sweep_summary takes a sweep folder the reader has made: tested in test_sweep.py
    refusal = next((word for arg, word in DOCUMENTED_REFUSALS.items() if arg in argv), None)
    plugin = next((extra for arg, extra in NEEDS_PLUGIN.items() if arg in argv), None)
    if plugin and importlib.util.find_spec("hydra_plugins") is not None:
        plugin = None  # the plugin is installed: the command must compose
    check = check_train_command if command == "train" else None
    as_on_a_t4(
        monkeypatch
    )  # a documented GPU command is checked as on the seed's GPU, not refused for this CPU
    try:
        preflight(HYDRA_COMMANDS[command], argv, check)
    except SystemExit as refused:
        error = capsys.readouterr().err.strip()
        assert refused.code == 2 and len(error.splitlines()) == 1, error
        if refusal:
            assert refusal in error
        elif plugin:
            assert f"pip install -e '.[{plugin}]'" in error
        else:
            pytest.fail(f"{where}: python -m vit_cifar.{command} {arguments} is refused: {error}")
    else:
        assert refusal is None, f"{where}: the docs show this refused, but it passes"
        assert plugin is None, f"{where}: composed without the {plugin} plugin"


@pytest.mark.e2e
def test_every_command_is_a_program_on_the_path_too(tmp_path):
    """pyproject's console scripts: the same entry, pre-flight included (installed by ``pip install -e .``)."""
    import subprocess
    import sys

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    shown = {command for _, command, _ in COMMANDS}
    assert {target.split(":")[0].removeprefix("vit_cifar.") for target in scripts.values()} == shown
    program = Path(sys.executable).parent / "vit-cifar-evaluate"
    if not program.exists():
        pytest.skip("the package is not installed here (pip install -e .)")
    result = subprocess.run([str(program), "batch_sise=3"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown key batch_sise")
    assert list(tmp_path.iterdir()) == []
