"""The CUDA-only code paths, run on CPU: the same library code a GPU run takes, with the device-dependent
choices made for a CUDA device's description (vit_cifar.devices.DeviceSpec).

What each test drives on CPU, and the branch of a GPU run it stands for:
  - Lightning's MixedPrecision plugin in bf16-mixed, and in 16-mixed with its GradScaler (CPU has one), with
    fused AdamW (CPU has the kernel) and gradient clipping: the default config on any CUDA GPU;
  - precision ``auto`` and the rest of the default config resolved for compute capability 7.5 (T4), 8.0
    (A100) and 9.0 (H100), trained through ``train()`` on CPU;
  - ``torch.compile`` of a tiny model (Dynamo's capture with a lightweight backend; Inductor's code
    generation is the GPU check's, scripts/gpu_check.sh);
  - the count of host-device synchronisations per training step (no timing);
  - ``data.device_aug`` and evaluation under 3-process gloo DDP.
The GPU check (scripts/gpu_check.sh) runs the tests marked ``cuda`` on a real GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers.logger import DummyLogger
from omegaconf import OmegaConf

from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
from faults_support import FAST_RUN, error_lines, train_cli
from sync_counter import SyncCounter
from vit_cifar.config.schema import validate_config
from vit_cifar.data import CIFARDataModule, gpu_aug
from vit_cifar.data.gpu_aug import DeviceAugment, DeviceBatches
from vit_cifar.data.samplers import augmentation_seeds
from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD
from vit_cifar.devices import CPU, DeviceSpec, local_device, resolve_precision
from vit_cifar.errors import ConfigError
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

T4, A100, H100 = DeviceSpec.cuda(7, 5), DeviceSpec.cuda(8, 0), DeviceSpec.cuda(9, 0)
TINY_RUN = [*TINY_MODEL, *QUIET, *SYNTHETIC_SMALL, "trainer.accelerator=cpu", "aug=none"]
ONE_BATCH = [*TINY_RUN, "debug=fdr"]


@pytest.fixture(autouse=True)
def _restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


# ------------------------------------------------------------------------------------------ device choices


def test_precision_auto_never_picks_emulated_bf16():
    assert resolve_precision("auto", T4) == "16-mixed"  # is_bf16_supported() is True there: emulation
    assert resolve_precision("auto", A100) == "bf16-mixed"
    assert resolve_precision("auto", H100) == "bf16-mixed"
    assert resolve_precision("auto", DeviceSpec.cuda(7, 0)) == "16-mixed"  # V100
    assert resolve_precision("auto", CPU) == "32-true"
    assert resolve_precision("auto", DeviceSpec.cuda(8, 6)) == "bf16-mixed"
    assert resolve_precision("bf16-mixed", T4) == "bf16-mixed"  # asked for: kept (and checked, below)
    assert resolve_precision("16", CPU) == "16-mixed" and resolve_precision(32, CPU) == "32-true"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["fpu avx2 avx512f avx512_bf16"], "AVX512-BF16"),  # AMD EPYC (Zen 4)
        (["fpu avx512_bf16 amx_bf16 amx_tile"], "AMX"),  # Intel Xeon, Sapphire Rapids and newer
        (["fpu avx2 avx512f"], "emulated"),
        (["fp asimd bf16 i8mm"], "BF16"),  # Arm's Features line
        ([], "unknown"),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_the_cpus_bf16_support_is_read_from_its_flags(monkeypatch, flags, named):
    from vit_cifar import devices
    from vit_cifar.inference.engine import describe_device

    monkeypatch.setattr(devices, "_cpuinfo", lambda key: flags if key in ("flags", "Features") else ["A CPU"])
    assert devices.cpu_bf16() == named
    assert describe_device(torch.device("cpu")).startswith(f"cpu (A CPU, bf16 {named}, ")


def test_the_local_device_is_read_from_the_driver(monkeypatch):
    """The one function that asks the machine: a CUDA machine is described by its first GPU's capability, as
    NVML reports it (tests/test_seed_platform.py checks that CUDA is not initialised for it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("vit_cifar.devices._nvml_description", lambda index: ("Tesla T4", (7, 5), 15 * 2**30))
    assert local_device("auto").type == "cuda" and local_device("gpu").capability == (7, 5)
    assert resolve_precision("auto", local_device("gpu")) == "16-mixed"
    assert local_device("cpu") == CPU  # trainer.accelerator=cpu on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local_device("auto") == CPU


def test_a_training_asks_the_machine_once(tmp_path, monkeypatch):
    """On a GPU machine each ask is a query of the driver: train() asks once and hands the answer to the schema
    and the Trainer's precision."""
    from vit_cifar import devices
    from vit_cifar.training import run

    asked = []

    def counting(accelerator="auto"):
        asked.append(accelerator)
        return CPU

    monkeypatch.setattr(devices, "local_device", counting)
    monkeypatch.setattr(run, "local_device", counting)
    train(compose_config(ONE_BATCH, tmp_path))
    assert asked == ["cpu"]


def test_without_the_drivers_library_a_child_process_describes_the_gpu(tmp_path, monkeypatch):
    """Where NVML cannot be loaded, asking torch here would initialise CUDA in a notebook's kernel, and
    ``ddp_notebook`` then refuses to fork: a child process asks instead (here a fake torch answers it)."""
    import ctypes

    from vit_cifar import devices

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    def initialised(*args, **kwargs):
        raise RuntimeError("TRIPWIRE: CUDA was initialised in this process")

    (tmp_path / "torch.py").write_text(
        "from types import SimpleNamespace\n"
        "props = SimpleNamespace(name='Tesla T4', major=7, minor=5, total_memory=15 * 2**30)\n"
        "cuda = SimpleNamespace(get_device_properties=lambda index: props)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the child's torch
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    monkeypatch.setattr(torch.cuda, "_lazy_init", initialised)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    devices._child_process_description.cache_clear()
    assert devices.cuda_description(0) == ("Tesla T4", (7, 5), 15 * 2**30)
    assert local_device("auto") == DeviceSpec.cuda(7, 5, local_device().triton, 15 * 2**30)
    devices._child_process_description.cache_clear()  # the fake's answer is not this machine's
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(
    ("pin_memory", "device", "pinned"),
    [(None, "cuda", True), (None, "cpu", False), (False, "cuda", False), (True, "cpu", True)],
)
def test_pinned_memory_follows_the_trainers_device(pin_memory, device, pinned):
    dm = CIFARDataModule(
        source="synthetic", synthetic={"train_per_class": 2}, val_size=0, pin_memory=pin_memory
    )
    strategy = SimpleNamespace(root_device=torch.device(device))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=strategy)  # what it reads of a Trainer
    dm.setup("test")
    assert dm.test_dataloader().pin_memory is pinned


def test_combinations_that_cannot_train_are_refused_before_any_work(tmp_path):
    bf16_compiled = compose_config(["trainer.precision=bf16-mixed", "compile=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.precision=bf16-mixed with compile on a GPU of compute"):
        validate_config(bf16_compiled, device=T4)
    validate_config(bf16_compiled, device=H100)
    validate_config(compose_config(["trainer.precision=bf16-mixed", "compile=false"], tmp_path), device=T4)
    # experiment=fast asks for bf16 and compile: fine on Ampere and newer, refused on a T4, where auto works
    fast = compose_config(["experiment=fast"], tmp_path)
    validate_config(fast, device=A100)
    with pytest.raises(ConfigError, match="use trainer.precision=16-mixed"):
        validate_config(fast, device=T4)
    validate_config(compose_config(["experiment=fast", "trainer.precision=auto"], tmp_path), device=T4)
    with pytest.raises(ConfigError, match=r"^optim.fused=true but torch.optim.LBFGS has no fused kernel"):
        validate_config(
            compose_config(["optim._target_=torch.optim.LBFGS", "optim.fused=true"], tmp_path), device=H100
        )
    with pytest.raises(ConfigError, match=r"^trainer.precision='16-half' is unknown"):
        validate_config(compose_config(["trainer.precision=16-half"], tmp_path))
    with pytest.raises(ConfigError, match=r"^compile_backend='fast' is unknown"):
        validate_config(compose_config(["compile=true", "compile_backend=fast"], tmp_path))


def test_a_gpu_trainer_without_a_gpu_stops_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = train_cli([*FAST_RUN, "trainer=gpu", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert error_lines(result) == [
        "error: trainer.accelerator=gpu but no CUDA GPU is visible here: use trainer=cpu (or "
        "trainer.accelerator=cpu) on this machine"
    ]


# ------------------------------------------------------------------------------------------ clipping


class ClipSpy:
    """Records the total gradient norm every clipping call sees (clip_grad_norm_ returns it)."""

    def __init__(self, monkeypatch) -> None:
        self.norms: list[float] = []
        original = torch.nn.utils.clip_grad_norm_

        def spy(parameters, max_norm, *args, **kwargs):
            norm = original(parameters, max_norm, *args, **kwargs)
            self.norms.append(float(norm))
            return norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)


@pytest.fixture
def logged(monkeypatch) -> list[dict]:
    """What the loggers get under fast_dev_run (Lightning swaps them for a DummyLogger)."""
    records: list[dict] = []
    monkeypatch.setattr(DummyLogger, "log_metrics", lambda self, metrics, step=None: records.append(metrics))
    return records


def _first_step_norms(tmp_path: Path, overrides: list[str], spy: ClipSpy, logged, device=None):
    spy.norms.clear()
    logged.clear()
    torch.manual_seed(0)
    metrics = train(compose_config([*ONE_BATCH, *overrides], tmp_path), device=device)
    grad_norms = [m["train/grad_norm"] for m in logged if "train/grad_norm" in m]
    return list(spy.norms), grad_norms, metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("fused", [True, False])
def test_clipping_sees_the_true_gradients_in_mixed_precision(tmp_path, monkeypatch, logged, precision, fused):
    """The default config's first step on a GPU: mixed precision, gradient clipping at 1.0, and (fused=true)
    fused AdamW. Lightning refuses to clip for a fused optimiser under its MixedPrecision plugin (the crash of
    every default GPU run); ClassifierModule clips the unscaled gradients itself. Under 16-mixed the loss is
    scaled by 65,536: clipping (and the logged grad norm) must see the true norm, as in 32-true."""
    spy = ClipSpy(monkeypatch)
    reference, ref_logged, _ = _first_step_norms(
        tmp_path / "ref", ["trainer.precision=32-true", "optim.fused=false"], spy, logged
    )
    norms, grad_norms, metrics = _first_step_norms(
        tmp_path / "run",
        [f"trainer.precision={precision}", f"optim.fused={str(fused).lower()}"],
        spy,
        logged,
    )
    assert metrics["precision"] == precision  # 16-mixed stays 16-mixed on CPU (Lightning would use bf16)
    assert len(reference) == len(norms) == 1 and reference[0] > 1.0  # the clip bites
    assert norms[0] == pytest.approx(reference[0], rel=0.05)  # not 65,536 times larger
    assert grad_norms == [pytest.approx(norms[0], rel=1e-4)] and ref_logged == [pytest.approx(reference[0])]


def test_the_16_mixed_scaler_path_runs_with_a_fused_optimiser(tmp_path, monkeypatch):
    """The GradScaler's bookkeeping with fused AdamW, seen inside the optimiser's step (``GradScaler.step``
    deletes both attributes afterwards): unscaled once by our clipping, so the kernel gets ``found_inf`` and no
    scale (a scale there would divide the already unscaled gradients by 65,536 again); the scale is updated
    after the step."""
    seen: list[tuple] = []
    unscaled: list[int] = []
    real_step, real_unscale = torch.optim.AdamW.step, torch.amp.GradScaler.unscale_

    def step(self, closure=None):
        seen.append((getattr(self, "grad_scale", None), getattr(self, "found_inf", None)))
        return real_step(self, closure)

    def unscale(self, optimizer):
        unscaled.append(id(optimizer))
        return real_unscale(self, optimizer)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", unscale)
    overrides = [*TINY_RUN, "trainer.precision=16-mixed", "optim.fused=true"]
    overrides += [
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
    ]
    train(compose_config([*overrides, "test=false", "~logger", "callbacks.lr_monitor=null"], tmp_path))
    assert len(seen) == 3 and len(unscaled) == 3 and len(set(unscaled)) == 1  # once per step, one optimiser
    for grad_scale, found_inf in seen:
        assert grad_scale is None  # unscaled before the step: no scale passed
        assert isinstance(found_inf, torch.Tensor) and float(found_inf) == 0.0  # finite gradients: stepped


# ------------------------------------------------------------------------------------------ the whole config


def _changed_keys(cfg, reference, prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two configs (or exist in one only)."""
    if not (isinstance(cfg, dict) and isinstance(reference, dict)):
        return set() if cfg == reference else {prefix.rstrip(".")}
    return {
        key
        for name in cfg.keys() | reference.keys()
        for key in _changed_keys(
            cfg.get(name, "<absent>"), reference.get(name, "<absent>"), f"{prefix}{name}."
        )
    }


# The default config, only smaller: a tiny network, 500 synthetic images, one epoch, no worker processes, CPU,
# and Dynamo's capture without Inductor's code generation. The test checks that nothing else differs.
SMALL_DEFAULT = [*TINY_MODEL, *SYNTHETIC_SMALL, "data.num_workers=0", "trainer.accelerator=cpu"]
SMALL_DEFAULT += ["trainer.max_epochs=1", "scheduler.warmup_epochs=0", "compile_backend=aot_eager"]
SMALLER = {f"model.{k}" for k in ("embed_dim", "depth", "num_heads", "drop_rate")}
SMALLER |= {f"data.{k}" for k in ("synthetic.train_per_class", "synthetic.test_per_class", "val_size")}
SMALLER |= {"data.batch_size", "data.num_workers", "trainer.accelerator", "trainer.max_epochs"}
SMALLER |= {"scheduler.warmup_epochs", "compile_backend"}


@pytest.mark.parametrize(
    ("device", "precision", "compiled"),
    [(T4, "16-mixed", False), (A100, "bf16-mixed", True), (H100, "bf16-mixed", True)],
    ids=str,
)
def test_the_default_config_trains_with_cudas_choices(tmp_path, monkeypatch, device, precision, compiled):
    """The shipped defaults (precision auto, optim.fused null, compile auto, clipping 1.0, the seed's
    augmentation in the DataLoader, every default callback and logger) with every device-dependent choice made
    for a CUDA GPU, trained on CPU. Compile runs Dynamo with the aot_eager backend (the same graphs, without
    Inductor's code generation); compile=auto leaves a T4 eager."""
    cfg = compose_config(SMALL_DEFAULT, tmp_path)
    reference = OmegaConf.to_container(compose_config(["data=synthetic"], tmp_path))  # the defaults
    assert _changed_keys(OmegaConf.to_container(cfg), reference) == SMALLER
    fused = []
    real_init = torch.optim.AdamW.__init__

    def spy_init(self, *args, **kwargs):
        fused.append(kwargs.get("fused"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy_init)
    spy = ClipSpy(monkeypatch)
    metrics = train(cfg, device=device)
    assert metrics["precision"] == precision
    assert fused == [True]
    assert len(spy.norms) == 9  # clipped at every step: 9 full batches of 32 of the 400 - 100 training images
    assert metrics["compile"] is compiled and metrics.get("eager_calls", 0) == 0
    assert metrics["test_images"] == 100 and 0.0 <= metrics["test_acc"] <= 1.0


# ------------------------------------------------------------------------------------------ syncs


@pytest.mark.parametrize(("device", "precision"), [(H100, "bf16-mixed"), (T4, "16-mixed")], ids=str)
def test_a_training_step_never_waits_for_the_device(tmp_path, monkeypatch, device, precision):
    """Counts the calls that read device data on the host during 4 whole training steps of the default GPU
    config (with EMA and the GPU data path, its CUDA branch): none. The finite-loss guard, the grad-norm
    monitor and the progress bar read the device only every log_every_n_steps (50) steps, torchmetrics
    validates nothing, EMA updates in one foreach call, and fused AdamW takes the GradScaler's found_inf on
    the device. MixUp/CutMix are off: their per-batch draws are host numbers on every device, which the
    counter cannot tell from device reads on CPU."""
    monkeypatch.setattr(gpu_aug, "MASKED_DEVICES", ("cuda", "cpu"))  # the CUDA branch of the augmentation
    SyncCounter.instances.clear()
    overrides = [*TINY_MODEL, *SYNTHETIC_SMALL, "trainer.accelerator=cpu", "callbacks=ema"]
    overrides += [
        "callbacks.model_summary=null",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "test=false",
    ]
    overrides += ["data.device_aug=true", "aug.mixup_alpha=0", "aug.cutmix_alpha=0", "compile=false"]
    overrides += [
        "+callbacks.sync_counter={_target_:sync_counter.SyncCounter,start:2,steps:4}",
        "~logger",
        "callbacks.lr_monitor=null",
    ]
    metrics = train(compose_config(overrides, tmp_path), device=device)
    assert metrics["precision"] == precision
    [counter] = SyncCounter.instances
    assert counter.counted_steps == 4
    assert dict(counter.calls) == {}, counter.where


def test_the_sync_counter_counts(tmp_path):
    """The counter itself: the old finite-loss check (bool of a tensor, every step) is counted."""
    counter = SyncCounter(start=0, steps=1)
    counter._install()
    try:
        loss = torch.tensor(1.0)
        bool(torch.isfinite(loss).all())
        torch.unique(torch.tensor([1, 2, 2]))
        loss.item()
        torch.as_tensor(32.0, device=loss.device)  # a scalar copied to the device (torchmetrics' weight=32)
        torch.as_tensor(loss, device=loss.device)  # already a tensor: no copy, not counted
        torch.tensor([1.0])  # no device named: host data staying on the host
    finally:
        counter._remove()
    assert dict(counter.calls) == {
        "Tensor.__bool__": 1,
        "torch.unique": 1,
        "Tensor.item": 1,
        "torch.as_tensor": 1,
    }
    SyncCounter.instances.remove(counter)


# ------------------------------------------------------------------------------------------ compile


def test_compiled_training_is_one_static_graph_and_reported_as_it_ran(tmp_path, monkeypatch):
    """Dynamo's graphs of a run: one, with static shapes (the sanity check's validation batch of 100, then
    training batches of 32, used to turn the training graph dynamic); the metrics report that every training
    forward call ran compiled."""
    from torch._dynamo import register_backend

    graphs: list[tuple] = []

    @register_backend(name="vit_cifar_test_counting")
    def counting(gm, example_inputs):
        shapes = tuple(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4)
        # A dynamic graph's placeholders carry symbolic sizes (the inputs themselves are concrete tensors).
        values = [node.meta.get("example_value") for node in gm.graph.nodes if node.op == "placeholder"]
        symbolic = any(
            isinstance(v, torch.SymInt)
            or (isinstance(v, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in v.shape))
            for v in values
        )
        graphs.append((shapes, symbolic))
        return gm.forward

    overrides = [
        *TINY_MODEL,
        *QUIET,
        *SYNTHETIC_SMALL,
        "trainer=cpu",
        "trainer.max_epochs=2",
        "scheduler.warmup_epochs=1",
        "~logger",
        "callbacks.lr_monitor=null",
    ]
    overrides += ["compile=true", "compile_backend=vit_cifar_test_counting"]
    metrics = train(compose_config(overrides, tmp_path))
    assert graphs and not any(symbolic for _, symbolic in graphs)
    images = [shape for shapes, _ in graphs for shape in shapes if shape[1:] == (3, 32, 32)]  # not weights
    assert images == [(32, 3, 32, 32)]  # one training graph for the whole run; evaluation runs eagerly
    assert metrics["compile"] is True and metrics["eager_calls"] == 0


def test_each_run_starts_from_a_clean_compile_state(tmp_path, monkeypatch):
    """Runs in one process, as the jobs of a -m sweep: with a recompile limit of 1, the second run's new
    batch shapes would leave it running eagerly (and reporting "compile": true) if the first run's graphs
    were kept; each run resets Dynamo, and a run that did fall back says so in its metrics."""
    import torch._dynamo

    base = [
        *TINY_MODEL,
        *QUIET,
        *SYNTHETIC_SMALL,
        "trainer=cpu",
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "~logger",
        "callbacks.lr_monitor=null",
        "test=false",
    ]
    base += ["compile=true", "compile_backend=eager"]
    with torch._dynamo.config.patch(recompile_limit=1):  # torch's own way to change it for a while
        for batch in (32, 16):
            metrics = train(compose_config([*base, f"data.batch_size={batch}"], tmp_path / str(batch)))
            assert metrics["compile"] is True and metrics["eager_calls"] == 0
        monkeypatch.setattr(torch.compiler, "reset", lambda: None)  # as before: the last run's graphs stay
        metrics = train(compose_config([*base, "data.batch_size=8"], tmp_path / "8"))
        assert metrics["compile"] is False and metrics["eager_calls"] > 0


# ------------------------------------------------------------------------------------------ the GPU data path


def test_device_augmentation_draws_per_rank_and_epoch_from_the_seed():
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    augment = DeviceAugment({"policy": "trivialaugment", "erasing_p": 0.5}, CIFAR10_MEAN, CIFAR10_STD, 10)

    def first_batch(seed: int, rank: int, epoch: int) -> torch.Tensor:
        batches = DeviceBatches(images, labels, 8, seed=seed, rank=rank, world_size=2)
        batches.sampler.set_epoch(epoch)
        x, y = next(iter(batches))
        return augment(x, y, generator=batches.generator)[0]

    # the ranks' first batches hold different images: compare the draws on the same images instead
    same_images = DeviceBatches(images, labels, 8, seed=0, rank=0, world_size=2)
    x, y = next(iter(same_images))
    draws = {}
    for seed, rank, epoch in [(0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0)]:
        g = torch.Generator().manual_seed(augmentation_seeds(seed, epoch, rank, 1)[0])
        draws[seed, rank, epoch] = augment(x, y, generator=g)[0]
    keys = list(draws)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not torch.equal(draws[a], draws[b]), (a, b)
    assert torch.equal(first_batch(0, 1, 3), first_batch(0, 1, 3))  # reproducible from the seed
    assert len({augmentation_seeds(0, e, r, 1)[0] for e in range(3) for r in range(8)}) == 24


def test_ddp_with_the_gpu_data_path_counts_every_image_once(tmp_path):
    """3 gloo processes (as with 3 GPUs): 100 validation and 100 test images do not split evenly, yet each is
    counted exactly once (Lightning's DistributedSampler would count 2 twice); each rank and epoch draws its
    own augmentation from the seed."""
    run = tmp_path / "run"
    record = (
        f"+callbacks.record={{_target_:fault_callbacks.RecordAugmentationSeeds,out_dir:'{tmp_path / 'aug'}'}}"
    )
    args = [*FAST_RUN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=3", "trainer.max_epochs=2"]
    args += [
        "data.batch_size=96",  # the global batch: 32 images per rank
        "data.device_aug=true",
        "trainer.precision=16-mixed",
        "optim.fused=true",
        record,
    ]
    result = train_cli([*args, f"hydra.run.dir={run}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_images"] == 100 and metrics["val_images"] == 100 and metrics["device"].endswith("x3")
    records = [json.loads((tmp_path / "aug" / f"aug-rank{r}.json").read_text()) for r in range(3)]
    for r, record in enumerate(records):
        assert record["seeds"] == {str(e): augmentation_seeds(42, e, r, 1)[0] for e in (0, 1)}

    # and the logged accuracy is that of one process over the whole split (float16 sums may round differently
    # in batches of 34 than of 100: one image at most)
    from torchmetrics.classification import MulticlassAccuracy

    from vit_cifar.checkpoints.loading import load_classifier
    from vit_cifar.training.run import build_datamodule

    datamodule = build_datamodule(compose_config(args[:-1], tmp_path / "single"))
    datamodule.setup("fit")
    val_x = torch.stack([x for x, _ in datamodule.val_set])
    net = load_classifier(run / "checkpoints" / "last.ckpt").net
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):  # as validated: 16-mixed
        accuracy = MulticlassAccuracy(10, average="micro")(net(val_x), datamodule.val_set.labels)
    assert metrics["val_acc_last_epoch"] == pytest.approx(float(accuracy), abs=0.0101)


# ------------------------------------------------------------------------------------------ the other branches
# Every other `cuda` / `is_available` / `device.type` branch of the code, driven with torch.cuda's functions
# replaced by stand-ins that describe a GPU.


def test_checkpoints_keep_and_restore_the_cuda_generator(monkeypatch):
    from vit_cifar.training import callbacks

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7, 8], dtype=torch.uint8)
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state.tolist())
    )
    states = callbacks.capture_rng_states()
    assert states["cuda"].tolist() == [7, 8]
    callbacks.restore_rng_states(states)
    assert restored == [[7, 8]]


def test_evaluation_names_the_gpu_and_picks_it_for_auto(monkeypatch):
    from vit_cifar.inference import engine as inference

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        "vit_cifar.devices._nvml_description", lambda index: ("NVIDIA H200", (9, 0), 141 * 2**30)
    )
    assert inference.resolve_device("auto") == torch.device("cuda")
    assert inference.resolve_device("gpu") == torch.device("cuda")
    assert inference.describe_device(torch.device("cuda")) == "cuda (NVIDIA H200)"


def test_a_finished_sweep_job_frees_the_gpu_and_the_compiled_graphs(monkeypatch):
    from vit_cifar.sweeps import jobs as sweep

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.compiler, "reset", lambda: calls.append("compiler.reset"))
    sweep._release_memory()
    assert calls == ["compiler.reset", "empty_cache"]


# ------------------------------------------------------------------------------------------ the device check


def test_the_gpu_check_is_prepared(tmp_path):
    """scripts/gpu_check.sh --dry-run: the inputs it needs, each run's config check (as python -m vit_cifar.train
    does first), and every command with its time limit: what users run (the seed recipe on trainer=gpu with its
    default data path, experiment=fast, the notebook on one GPU and on two), in 8 minutes on one GPU."""
    import os
    import re
    import subprocess
    import sys

    from conftest import ROOT

    def dry_run(device_dir: Path) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "DEVICE_DIR": str(device_dir),
            "OUT": str(tmp_path / "out"),
            "PYTHON": sys.executable,
        }
        script = ROOT / "scripts" / "gpu_check.sh"
        return subprocess.run(
            ["bash", str(script), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
        )

    missing = dry_run(tmp_path / "nothing")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "is missing" in missing.stderr
    device = tmp_path / "device"
    (device / "wheels").mkdir(parents=True)
    (device / "wheels" / "hydra_core-1.3.8-py3-none-any.whl").touch()
    (device / "cifar10-jpeg.tar.gz").touch()
    result = dry_run(device)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pip install -q --no-index --no-deps --target /tmp/site")
    assert lines[0].endswith("&& export PYTHONPATH=/tmp/site:src")
    steps = dict(re.findall(r"^\[(\S+), at most (\d+)s\]", result.stdout, flags=re.M))
    assert list(steps) == [
        "environment",
        "cuda_tests",
        "seed_dataloader",
        "seed_16-mixed",
        "fast",
        "notebook_1gpu",
        "notebook_2gpu",
    ]
    assert "(only where 2 GPUs are visible:)\n[notebook_2gpu," in result.stdout
    one_gpu = sum(int(limit) for name, limit in steps.items() if name != "notebook_2gpu")
    assert one_gpu <= 8 * 60 - 10  # the wheels' install and the summary fit too
    assert all(int(steps[name]) >= 90 for name in ("seed_16-mixed", "fast"))  # a cold Inductor compile fits
    commands = {name: line for line in lines if (name := line[1:].split(",")[0]) in steps}
    assert "tests/test_cuda_device.py --json" in commands["cuda_tests"]
    # what users run: the seed recipe on trainer=gpu with its default data path and the default callbacks
    assert "experiment=seed trainer=gpu trainer.max_epochs=1 " in commands["seed_dataloader"]
    seed = commands["seed_16-mixed"]
    assert "experiment=seed trainer=gpu " in seed and "trainer.precision=16-mixed compile=true" in seed
    assert "experiment=fast" in commands["fast"]  # bf16-mixed, compiled, the GPU data path
    # the default data path everywhere; the DataLoader step measures the CPU workers' path, which it names
    assert all("progress_bar" not in line for line in lines)
    assert all("device_aug" not in line for name, line in commands.items() if name != "seed_dataloader")
    assert "data.device_aug=false" in commands["seed_dataloader"]
    assert " - 1 " in commands["notebook_1gpu"] and " - 2 " in commands["notebook_2gpu"]
