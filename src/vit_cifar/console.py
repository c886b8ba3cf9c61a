"""A quiet console: library messages that say nothing about the user's run are dropped; warnings that matter
stay. Installed once per process by every command (``cli.run_cli``)."""

from __future__ import annotations

import logging
import warnings

# Python warnings (message regex) that libraries raise about themselves, not about the run.
NOISY_WARNINGS = (
    # Lightning's pytree helper against a newer torch: a deprecation inside Lightning, printed twice per run
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # the model summary's size estimate under mixed precision: it says so and uses 32 bits
    r"Precision .* is not supported by the model summary",
    # training without a validation split (data.val_size=0) returns no validation loader, on purpose
    r"Total length of `list` across ranks is zero",
)
# Lightning's information lines (message prefix) that advertise or explain Lightning's own defaults.
NOISY_INFO = (
    "💡 Tip:",  # advertisements for Lightning's cloud products
    "Trainer already configured with model summary callbacks",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISY_INFO)


def quiet_library_noise() -> None:
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
