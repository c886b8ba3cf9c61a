"""Support for the fault tests: the CLI in a subprocess that runs this worktree's code, and a fast config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import QUIET, ROOT, SYNTHETIC_SMALL, TINY_MODEL

# The real pipeline with a tiny ViT on 300 synthetic training images (9 steps of 32 per epoch) and 100 for
# validation: a CPU epoch takes well under a second. The LR is logged at every step.
FAST_RUN = [
    "trainer=cpu",
    *TINY_MODEL,
    *QUIET,
    *SYNTHETIC_SMALL,
    "scheduler.warmup_epochs=1",
    "trainer.log_every_n_steps=1",
]
STEPS_PER_EPOCH = 9


def cli_env() -> dict[str, str]:
    """This checkout's ``src`` (absolute, so any cwd works) and this folder (for the test-only callbacks);
    one thread per process, as several processes share a few cores."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    cache = os.environ.get("VIT_CIFAR_CACHE", str(ROOT / ".cache" / "vit_cifar"))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "VIT_CIFAR_CACHE": cache,
    }


def train_cli(args: list[str], cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m vit_cifar.train <args>`` as a user runs it."""
    return command_cli("train", args, cwd, timeout)


def command_cli(
    command: str, args: list[str], cwd: Path = ROOT, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m vit_cifar.<command> <args>`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"vit_cifar.{command}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(argv: list[str], **popen) -> subprocess.Popen:
    """``python <argv>`` started in the background, e.g. ``["-m", "vit_cifar.train", ...]``, to be killed."""
    return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=cli_env(), text=True, **popen)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that the CLI wrote as its error."""
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]
