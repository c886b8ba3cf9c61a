"""The seed's own platform, emulated on CPU: DDP runs with the callbacks a user gets (progress bar on), and the
Kaggle/Colab notebook's two-GPU path (``ddp_notebook``: processes forked from the kernel) with a tripwire on
CUDA initialisation, as on a machine where GPUs are visible but must not be started before ``fit``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SYNTHETIC_SMALL, TINY_MODEL
from faults_support import cli_env
from test_notebook import NOTEBOOK, parameters_cell_index

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

HUNG_AFTER_S = 300  # far above a normal run here (under a minute): only a hang reaches it


def run_to_the_end(args: list[str], timeout: int = HUNG_AFTER_S) -> subprocess.CompletedProcess:
    """``python -m vit_cifar.train <args>``; a run still going after ``timeout`` is killed with all its ranks (a
    hung DDP run ignores SIGTERM) and fails the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vit_cifar.train", *args],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the ranks it starts die with it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"the run hung (killed after {timeout} s); its last output:\n{out[-1500:]}\n{err[-1500:]}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# The defaults a user gets (progress bar, checkpoints, finite-loss guard, figures, epoch log, DataLoader workers),
# with a tiny ViT on synthetic images so that two epochs take seconds.
@pytest.mark.parametrize(
    ("processes", "val_size"),
    [(2, 0), (3, 60)],
    ids=["2-processes-no-validation", "3-processes-with-validation"],
)
def test_a_ddp_run_with_the_default_callbacks_ends(tmp_path: Path, processes: int, val_size: int) -> None:
    run = tmp_path / "run"
    result = run_to_the_end(
        [
            *TINY_MODEL,
            *SYNTHETIC_SMALL,
            f"data.val_size={val_size}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            f"trainer.devices={processes}",
            f"data.batch_size={processes * 15}",  # the global batch, shared out among the processes
            "trainer.max_epochs=2",
            "scheduler.warmup_epochs=1",
            f"hydra.run.dir={run}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test_images"] == 100  # every test image once, over all ranks
    assert metrics["device"].endswith(f"x{processes}")
    assert (run / "checkpoints" / "last.ckpt").is_file()


def cuda_tripwire_source() -> str:
    """Code that makes this process (not the processes it forks) look like a machine with two T4s, visible
    through NVML as on Kaggle, and makes any CUDA initialisation in it raise. Lightning counts no GPU here
    (``torch.cuda.device_count`` is the real one), so ``trainer.accelerator=auto`` trains on the CPU, while our
    device choices in this process see the T4s; forked ranks see this machine as it is."""
    return "\n".join(
        [
            "import os, torch, vit_cifar.devices",
            "_kernel, _init, _available = os.getpid(), torch.cuda._lazy_init, torch.cuda.is_available",
            "def _tripwire(*args, **kwargs):  # the one door to CUDA's initialisation",
            "    if os.getpid() == _kernel:",
            "        raise RuntimeError('TRIPWIRE: CUDA was initialised in the parent process')",
            "    return _init(*args, **kwargs)",
            "torch.cuda._lazy_init = _tripwire",
            "torch.cuda.is_available = lambda: os.getpid() == _kernel or _available()",
            "vit_cifar.devices._nvml_description = lambda index: ('Tesla T4', (7, 5), 15 * 2**30)",
        ]
    )


@pytest.fixture
def cuda_tripwire(monkeypatch):
    def initialised(*args, **kwargs):
        raise RuntimeError("TRIPWIRE: CUDA was initialised")

    monkeypatch.setattr(torch.cuda, "_lazy_init", initialised)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("vit_cifar.devices._nvml_description", lambda index: ("Tesla T4", (7, 5), 15 * 2**30))


def test_the_gpu_is_described_without_initialising_cuda(tmp_path, cuda_tripwire, capsys, monkeypatch):
    from vit_cifar.config.entry import preflight
    from vit_cifar.devices import DeviceSpec, local_device
    from vit_cifar.inference.engine import describe_device
    from vit_cifar.training.run import check_train_command

    t4 = DeviceSpec.cuda(7, 5, triton=local_device().triton, memory=15 * 2**30)
    assert local_device("gpu") == local_device("auto") == t4
    assert describe_device(torch.device("cuda")) == "cuda (Tesla T4)"
    # train's whole pre-flight for the seed recipe on the GPU, as `python -m vit_cifar.train` runs it
    seed_on_gpu = ["experiment=seed", "trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}"]
    preflight("train", seed_on_gpu, check_train_command)
    with pytest.raises(SystemExit):  # a batch the GPU cannot hold, against the memory the driver reports
        preflight("train", [*seed_on_gpu, "data.batch_size=100000"], check_train_command)
    assert "15.0 GiB of memory on the GPU" in capsys.readouterr().err
    # Kaggle's T4 x2 as Lightning counts them: the global batch shared out among the two processes
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    preflight("train", [*seed_on_gpu, "trainer.devices=2"], check_train_command)
    with pytest.raises(SystemExit):
        preflight("train", [*seed_on_gpu, "trainer.devices=2", "data.batch_size=127"], check_train_command)
    assert (
        "data.batch_size=127 (the global batch) does not divide among 2 processes" in capsys.readouterr().err
    )
    assert not torch.cuda.is_initialized()


def notebook_until_training(nbformat, injected: str):
    """The notebook's cells up to and including the training cell, with ``injected`` run after its parameters."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(parameters_cell_index(nb) + 1, nbformat.v4.new_code_cell(injected))
    train_cell = next(i for i, c in enumerate(nb.cells) if "metrics = train(cfg)" in c.source)
    nb.cells = nb.cells[: train_cell + 1]
    return nb


def test_the_notebooks_two_gpu_path_forks_with_cuda_untouched(tmp_path, monkeypatch):
    """The notebook with two GPUs: ``ddp_notebook`` forks two processes from the kernel (gloo on CPU here), with
    the default callbacks; nothing before or after ``fit`` in the kernel may initialise CUDA."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "out"
    recipe = [
        *TINY_MODEL,
        *SYNTHETIC_SMALL,
        "data.num_workers=1",  # Colab's 2 vCPUs: one worker per process
        "aug=none",
        "trainer.max_epochs=1",
        "scheduler.warmup_epochs=0",
        "trainer.accelerator=auto",  # Lightning finds no GPU here and trains on the CPU, forked all the same
        "trainer.precision=32-true",
        "compile=false",
    ]
    injected = "\n".join(
        [
            cuda_tripwire_source(),
            f"RECIPE = {recipe!r}",
            "GPUS = 2",
            f"OUTPUT_DIR = {str(out)!r}",
            "INSTALL = False",
            "TENSORBOARD = False",
        ]
    )
    nb = notebook_until_training(nbformat, injected)
    # The kernel imports this checkout's code.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(
        nb, timeout=HUNG_AFTER_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["test_images"] == 100
    assert metrics["device"].endswith("x2")  # two forked processes trained and tested


def test_the_driver_is_asked_about_the_visible_gpu(monkeypatch):
    """NVML numbers every GPU of the machine: the description of visible device 0 under
    ``CUDA_VISIBLE_DEVICES=3,1`` is NVML's GPU 3 (a fake driver library here, answering as NVML does)."""
    import ctypes

    from vit_cifar import devices

    class FakeNVML:
        def __init__(self, name):
            self.asked, self.shut_down = [], False

        def nvmlInit_v2(self):
            return 0

        def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
            self.asked.append(index)
            handle._obj.value = 1000 + index
            return 0

        def nvmlDeviceGetName(self, handle, name, length):
            name.value = b"Tesla T4" if handle.value == 1003 else b"another GPU"
            return 0

        def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
            major._obj.value, minor._obj.value = 7, 5
            return 0

        def nvmlDeviceGetMemoryInfo(self, handle, memory):
            memory._obj[0] = 15 * 2**30  # total, then free and used
            return 0

        def nvmlShutdown(self):
            self.shut_down = True
            return 0

    nvml = FakeNVML("libnvidia-ml.so.1")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert devices.cuda_description(0) == ("Tesla T4", (7, 5), 15 * 2**30)
    assert nvml.asked == [3] and nvml.shut_down
    assert not torch.cuda.is_initialized()
