"""Running a ``-m`` sweep's jobs: a failed job is recorded in its folder (``error.txt``) and the sweep goes on;
when the sweep ends, the summary is written (``SweepSummary``, a Hydra callback; the summary itself is
:mod:`vit_cifar.sweeps.summary`)."""

from __future__ import annotations

import gc
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vit_cifar.checkpoints.atomic import write_atomic
from vit_cifar.errors import VitCifarError, one_line
from vit_cifar.sweeps.summary import ERROR_FILE, failure_line, report, summarise

log = logging.getLogger(__name__)


def in_sweep() -> bool:
    """Whether this process is running a job of a ``-m`` sweep (Hydra multirun)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_sweep_job(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job of a sweep. If it raises, write ``error.txt`` in its folder, say so on stderr and return
    ``{}``, so that the sweep goes on to its next job and the summary lists this one as failed.

    Catches ``Exception``, not Ctrl-C: an interrupted sweep still stops. A command-line sweep's values are
    checked before it starts (``config.entry.preflight``); what fails here is what only running can tell, or a
    value that a sweeper's config (``hydra.sweeper.params``) chose, which the job's own check refuses.
    """
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    try:
        return job(cfg)
    except Exception as err:
        line = f"{type(err).__name__}: {one_line(err)}"
        # A user error says all in its line; anything else keeps its traceback for whoever debugs it.
        detail = "" if isinstance(err, VitCifarError) else "\n" + traceback.format_exc()
        write_atomic(folder / ERROR_FILE, line + "\n" + detail)
        print(
            f"error: job {hydra_cfg.job.num} failed: {line}; "
            f"recorded in {folder / ERROR_FILE}, the sweep goes on",
            file=sys.stderr,
        )
        if detail:
            log.error(detail)
    finally:
        _release_memory()
    return {}


def _release_memory() -> None:
    """Free what a finished job left behind (e.g. after CUDA ran out of memory) before the next job starts,
    compiled graphs included: the next job compiles from a clean state (and ``train`` resets it again)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.compiler.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks`` in configs/hydra/default.yaml): summarise the sweep when it ends.
    If any job failed, the command then exits with code 1 and one line naming the first failure, so a script
    that runs a sweep sees it; the summary is written first either way."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        try:
            summary = summarise(folder)
        except (VitCifarError, OSError) as err:
            print(
                f"warning: no sweep summary ({one_line(err)}); after fixing it, run "
                f"python -m vit_cifar.sweep_summary {folder}",
                file=sys.stderr,
            )
            return
        print(report(summary))
        if summary.failed:
            print(f"error: {failure_line(summary)}", file=sys.stderr)
            sys.exit(1)
