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
# The Trainer's start-up banner (which accelerators exist): the same for every job of a sweep, so said once.
DEVICE_BANNER = ("GPU available:", "TPU available:", "HPU available:", "LOCAL_RANK:")
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropNoise(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.prefixes = NOISY_INFO

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def _noise_filters() -> list[_DropNoise]:
    filters = []
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        found = [f for f in logger.filters if isinstance(f, _DropNoise)]
        if not found:
            found = [_DropNoise()]
            logger.addFilter(found[0])
        filters.extend(found)
    return filters


def quiet_library_noise() -> None:
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    _noise_filters()


def quiet_device_banner(quiet: bool = True) -> None:
    """Drop (or, with ``quiet=False``, let through again) the Trainer's device banner: a sweep's jobs after the
    first run in the same process and would print it again, word for word, before each job."""
    for noise in _noise_filters():
        noise.prefixes = NOISY_INFO + DEVICE_BANNER if quiet else NOISY_INFO
