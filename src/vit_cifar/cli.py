"""What every ``python -m vit_cifar.<command>`` shares: the config folder and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vit_cifar.errors import VitCifarError

# configs/ sits at the top of the checkout, beside src/ (the package is installed in editable mode).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def run_cli(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run ``job``; a user error ends the process with one line on stderr and the error's exit code."""
    try:
        return job(cfg)
    except (VitCifarError, InstantiationException) as err:
        # Hydra's instantiate wraps what a constructor raises (a DataModule's or a callback's ConfigError).
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
        if not isinstance(err, VitCifarError):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
