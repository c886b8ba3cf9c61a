"""On a real CUDA GPU (marked ``cuda``; skipped elsewhere): the default config and both mixed precisions train,
compiled by Inductor, and a training step never waits for the GPU (CUDA's sync debug mode raises on any wait).

They run under pytest (``pytest -m cuda``) or, where pytest is not installed (the GPU check machine), as a
script: ``python tests/test_cuda_device.py --json results.json`` (scripts/gpu_check.sh). Hence no fixtures.
The CPU emulation of the same paths is tests/test_cuda_paths.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L
import torch

try:
    import pytest

    pytestmark = [
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)"),
    ]
except ImportError:  # run as a script
    pytest = None

TINY = ["model.embed_dim=64", "model.depth=2", "model.num_heads=2", "model.drop_rate=0.0"]
RUN = [
    "data=synthetic",
    "data.synthetic.train_per_class=100",
    "data.synthetic.test_per_class=20",
    "data.val_size=200",
    "data.batch_size=64",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "scheduler.warmup_epochs=0",
    "callbacks=ema",
    "callbacks.model_summary=null",
    "~logger",
    "callbacks.lr_monitor=null",
]


def _train(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vit_cifar.config.entry import CONFIG_DIR
    from vit_cifar.training.run import train

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with tempfile.TemporaryDirectory() as out, open_dict(cfg):
        cfg.paths.output_dir = out
        del cfg.hydra
        return train(cfg)


class NoSyncWindow(L.Callback):
    """CUDA's sync debug mode set to "error" from step ``start`` to step ``start + steps``: any operation that
    makes the host wait for the GPU raises inside those steps."""

    instances: list[NoSyncWindow] = []

    def __init__(self, start: int = 2, steps: int = 4) -> None:
        self.start, self.steps, self.checked = start, steps, 0
        NoSyncWindow.instances.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.start:
            torch.cuda.set_sync_debug_mode("error")
        elif trainer.global_step == self.start + self.steps:
            torch.cuda.set_sync_debug_mode("default")
            self.checked = self.steps

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


def test_the_default_config_trains_on_this_gpu():
    """precision auto, fused AdamW (optim.fused: null), clipping 1.0, EMA, the GPU data path, Inductor."""
    from vit_cifar.devices import local_device, resolve_precision

    device = local_device("auto")
    metrics = _train([*TINY, *RUN, "data.device_aug=true", "compile=true"])
    assert metrics["precision"] == resolve_precision("auto", device)
    expected = "bf16-mixed" if device.capability >= (8, 0) else "16-mixed"  # never emulated bf16
    assert metrics["precision"] == expected
    assert metrics["compile"] is True and metrics["eager_calls"] == 0
    assert metrics["test_images"] == 200 and 0.0 <= metrics["test_acc"] <= 1.0


def _no_sync(precision: str) -> None:
    from test_cuda_device import NoSyncWindow as Window  # the class the config names (tests/ is on the path)

    Window.instances.clear()
    overrides = [*TINY, *RUN, f"trainer.precision={precision}", "data.device_aug=true", "compile=false"]
    metrics = _train([*overrides, "+callbacks.no_sync={_target_:test_cuda_device.NoSyncWindow}"])
    assert metrics["precision"] == precision
    assert [w.checked for w in Window.instances] == [4]


def test_a_16_mixed_training_step_never_waits_for_the_gpu():
    """GradScaler with fused AdamW (found_inf stays on the device), clipping of unscaled gradients."""
    _no_sync("16-mixed")


def test_a_bf16_mixed_training_step_never_waits_for_the_gpu():
    _no_sync("bf16-mixed")


TESTS = [
    test_the_default_config_trains_on_this_gpu,
    test_a_16_mixed_training_step_never_waits_for_the_gpu,
    test_a_bf16_mixed_training_step_never_waits_for_the_gpu,
]


def main(argv: list[str]) -> int:
    """Run the tests without pytest; write ``[{test, outcome, seconds, error}]`` to ``--json``."""
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "src")]
    out = Path(argv[argv.index("--json") + 1]) if "--json" in argv else None
    results = []
    for test in TESTS:
        start = time.perf_counter()
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA GPU")
            test()
            outcome, error = "passed", None
        except Exception as err:  # noqa: BLE001 - every failure is recorded, the next test still runs
            outcome, error = "failed", "".join(traceback.format_exception(err))[-3000:]
        results.append(
            {
                "test": test.__name__,
                "outcome": outcome,
                "seconds": round(time.perf_counter() - start, 1),
                "error": error,
            }
        )
        print(f"{outcome:7} {test.__name__} ({results[-1]['seconds']} s)", flush=True)
        if error:
            print(error, flush=True)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["outcome"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
