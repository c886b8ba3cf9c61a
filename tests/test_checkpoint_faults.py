"""Checkpoints survive kills: a run killed with SIGKILL resumes to the same weights, metrics and LR schedule
as an uninterrupted one; a kill while a checkpoint is written leaves the previous file whole; checkpoints
that are corrupt, of another model, or that would run code are refused with one line."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import compose_config
from faults_support import FAST_RUN, STEPS_PER_EPOCH, error_lines, start, train_cli
from vit_cifar.checkpoints.loading import read_checkpoint
from vit_cifar.checkpoints.resume import SafeCheckpointIO
from vit_cifar.config.entry import run_cli
from vit_cifar.errors import CheckpointError, ConfigError
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

EPOCHS = 4
# Deterministic kernels; dropout, TrivialAugment, RandomErasing and MixUp/CutMix (the seed aug) all draw
# random numbers, so an exact resume needs every generator restored.
RESUMABLE = [*FAST_RUN, f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true", "model.drop_rate=0.1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run that was never interrupted."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train_cli([*RESUMABLE, f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def lr_by_step(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {
            int(row["step"]): float(row["train/lr/decay"])
            for row in csv.DictReader(f)
            if row["train/lr/decay"]
        }


# The killed and resumed run decodes in two persistent DataLoader workers, the uninterrupted one in the training
# process: the augmentations are drawn from (seed, epoch, position), so neither the workers nor the restart
# change them.
WITH_WORKERS = ["data.num_workers=2", "data.persistent_workers=true"]


def test_killed_run_resumes_exactly(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = start(
        ["-m", "vit_cifar.train", *RESUMABLE, *WITH_WORKERS, f"hydra.run.dir={run}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # a bounded wait for the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "metrics.json").exists()
    at_kill = read_checkpoint(last)
    assert at_kill["epoch"] < EPOCHS - 1

    resumed = train_cli([*RESUMABLE, *WITH_WORKERS, f"hydra.run.dir={run}", "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = f"{at_kill['epoch'] + 1} epochs, {at_kill['global_step']} steps done"
    assert f"resuming from {last}: {done}" in resumed.stdout + resumed.stderr

    # The same final weights and optimiser state, bit for bit.
    a, b = read_checkpoint(finished_run / "checkpoints" / "last.ckpt"), read_checkpoint(last)
    assert (
        (a["epoch"], a["global_step"])
        == (b["epoch"], b["global_step"])
        == (EPOCHS - 1, EPOCHS * STEPS_PER_EPOCH)
    )
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    assert a["lr_schedulers"] == b["lr_schedulers"]

    # The same metrics.
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (finished_run, run))
    for key in (
        "epochs",
        "val_acc_last_epoch",
        "val_acc_best",
        "test_acc",
        "test_loss",
        "checkpoint_after_epoch",
    ):
        assert ma[key] == mb[key], key

    # The resumed part logs the LR of every remaining step, equal to the uninterrupted run's: no jump.
    # (The CSV also keeps whatever the killed part had flushed before the kill.)
    lr_a, lr_b = lr_by_step(finished_run), lr_by_step(run)
    assert set(range(at_kill["global_step"], EPOCHS * STEPS_PER_EPOCH)) <= set(lr_b)
    assert max(lr_b) == EPOCHS * STEPS_PER_EPOCH - 1
    assert {step: lr_a[step] for step in lr_b} == lr_b


# Runs the CLI with torch.save stopping halfway through the second write of last.ckpt (the first is epoch
# 0's): the parent kills it there, as a kill, OOM or pre-emption would.
HALF_WRITE = """
import io, runpy, sys, time, torch
real_save, writes = torch.save, []
def half_save(obj, f, *args, **kwargs):
    if getattr(f, "name", "").endswith(".partial") and "/.last.ckpt." in f.name:
        writes.append(f.name)
        if len(writes) == 2:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            print("HALF-WRITTEN", f.name, flush=True)
            time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = half_save
sys.argv[0] = "vit_cifar.train"
runpy.run_module("vit_cifar.train", run_name="__main__")
"""


def test_kill_while_saving_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(
        ["-c", HALF_WRITE, *FAST_RUN, "trainer.max_epochs=3", f"hydra.run.dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    watchdog = threading.Timer(240, proc.kill)  # never hang the test session
    watchdog.start()
    partial = next((line.split()[1] for line in proc.stdout if line.startswith("HALF-WRITTEN")), None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    watchdog.cancel()
    assert partial is not None and proc.returncode == -signal.SIGKILL

    last = run / "checkpoints" / "last.ckpt"
    assert partial == str(last.with_name(f".last.ckpt.{proc.pid}.partial"))  # this process's own temporary
    with pytest.raises(CheckpointError, match="cannot be read safely"):  # the kill did cut that write short
        read_checkpoint(partial)
    previous = read_checkpoint(last)  # while last.ckpt is epoch 0's, whole
    assert (previous["epoch"], previous["global_step"]) == (0, STEPS_PER_EPOCH)
    for path in (run / "checkpoints").glob("*.ckpt"):  # as is every file under a checkpoint's name
        read_checkpoint(path)


def test_corrupt_checkpoint_is_refused_for_resume(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    data = (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    last.write_bytes(data[: len(data) // 2])

    result = train_cli([*RESUMABLE, f"hydra.run.dir={run}", "ckpt_path=last"])
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.startswith(f"error: checkpoint {last} cannot be read safely (")
    assert line.endswith("it is truncated, corrupt, or holds objects other than tensors and plain values")
    assert "Traceback" not in result.stderr
    assert last.read_bytes() == data[: len(data) // 2]  # nothing overwritten
    assert (
        sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"] and not (run / "metrics.json").exists()
    )


def refused(capsys, overrides: list[str], out: Path) -> str:
    """Run the train command in this process; it must stop with exit code 1. Returns its one error line."""
    with pytest.raises(SystemExit) as stop:
        run_cli(train, compose_config([*FAST_RUN, *overrides], out))
    assert stop.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert not (out / "metrics.json").exists()
    return line


def test_checkpoint_of_another_model_is_refused(capsys, finished_run: Path, tmp_path: Path) -> None:
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    # Resuming needs this run's model to fit the checkpoint (train=false evaluates the checkpoint's own network).
    line = refused(capsys, [f"ckpt_path={ckpt}", "model.embed_dim=64"], tmp_path)
    assert line == (
        f"error: checkpoint {ckpt} is of another model (model.embed_dim=32 there, 64 here): use the "
        "checkpoint's model settings (model.num_classes follows data.num_classes), or another checkpoint"
    )
    line = refused(capsys, [f"ckpt_path={ckpt}", "data.num_classes=5"], tmp_path)  # resuming, too
    assert "is of another model (model.num_classes=10 there, 5 here)" in line


class RunsCode:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_checkpoint_that_would_run_code_is_refused(capsys, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": RunsCode(marker)}, "epoch": 0}, evil)

    line = refused(capsys, ["train=false", f"ckpt_path={evil}"], tmp_path)
    assert line.startswith(f"error: checkpoint {evil} cannot be read safely (Weights only load failed")
    with pytest.raises(CheckpointError, match="cannot be read safely"):  # whatever a caller asks for
        SafeCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()

    torch.load(evil, weights_only=False)  # the file is real: an unsafe load does run its code
    assert marker.exists()


def _edited(finished_run: Path, tmp_path: Path, edit) -> Path:
    """A copy of the finished run's last checkpoint with ``edit(checkpoint)`` applied."""
    checkpoint = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    edit(checkpoint)
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["hyper_parameters"]["net"].update(patch_sise=4),
            "names a network that cannot be built: VisionTransformer.__init__() got an unexpected keyword "
            "argument 'patch_sise'",
        ),
        (lambda c: c.update(classes=["cat", "dog"]), "names 2 classes but its network has 10 outputs"),
        (  # a file of a few hundred KB that declares a 100,000-pixel image: refused before any allocation
            lambda c: c["hyper_parameters"]["net"].update(img_size=100_000),
            "does not fit the VisionTransformer it describes: 1 shapes differ (e.g. pos_embed",
        ),
    ],
)
def test_a_checkpoint_that_contradicts_itself_is_refused_in_one_line(finished_run, tmp_path, edit, message):
    from vit_cifar.checkpoints.loading import load_classifier

    path = _edited(finished_run, tmp_path, edit)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path} ") + ".*" + re.escape(message)):
        load_classifier(path)
    from faults_support import cli_env

    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(image)
    result = subprocess.run(
        [sys.executable, "-m", "vit_cifar.predict", f"ckpt_path={path}", f"inputs={image}"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and len(error_lines(result)) == 1 and "Traceback" not in result.stderr


def test_a_second_training_into_a_busy_run_folder_is_refused_before_writing(tmp_path: Path) -> None:
    """Two trainings into one folder would overwrite each other: the second meets the first's lock, in the
    pre-flight (nothing written) and, if it slips past, at the start of its job."""
    from vit_cifar.training.runlock import run_folder_lock

    run = tmp_path / "run"
    with run_folder_lock(run):  # this test process plays the first training
        result = train_cli([*FAST_RUN, f"hydra.run.dir={run}"])
        assert result.returncode == 2
        [line] = error_lines(result)
        assert line.startswith(
            f"error: run folder {run} is in use by another training (process {os.getpid()})"
        )
        assert sorted(p.name for p in run.iterdir()) == [".run.lock"]  # no .hydra, no log, no checkpoints
        with pytest.raises(ConfigError, match="is in use by another training"), run_folder_lock(run):
            pass
    with run_folder_lock(run):  # released when the first ends
        pass


def test_temporary_files_of_atomic_writes_are_per_process(tmp_path: Path) -> None:
    from vit_cifar.checkpoints.atomic import write_atomic

    target, written_to = tmp_path / "metrics.json", []
    write_atomic(target, lambda f: written_to.append(Path(f.name).name))
    assert written_to == [f".metrics.json.{os.getpid()}.partial"]
    write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_resumed_run_keeps_the_csv_rows_of_its_first_part(tmp_path: Path) -> None:
    """csv/metrics.csv of a resumed run holds its whole history (evaluate plots the warmup from it)."""
    run = tmp_path / "run"
    first = train_cli([*FAST_RUN, "trainer.max_epochs=2", f"hydra.run.dir={run}"])
    assert first.returncode == 0, first.stderr[-3000:]
    more = train_cli([*FAST_RUN, "trainer.max_epochs=3", f"hydra.run.dir={run}", "ckpt_path=last"])
    assert more.returncode == 0, more.stderr[-3000:]
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/acc")}) == [0, 1, 2]
    assert min(int(r["step"]) for r in rows) == 0  # the first part's steps are still there
    assert "will be deleted" not in more.stderr


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()  # as TensorBoard reads it: a resumed writer's purge_step hides the stopped run's later events
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_resumed_run_logs_each_step_once_and_counts_its_whole_wall_time(tmp_path: Path) -> None:
    """Killed in its second epoch after flushing its CSV at every step, then resumed: metrics.csv and
    TensorBoard hold every step once, with the values of a run never killed; wall_s counts both parts."""
    every_step = [*FAST_RUN, "trainer.max_epochs=3", "trainer.deterministic=true"]
    every_step.append("+logger.csv.flush_logs_every_n_steps=1")
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert train_cli([*every_step, f"hydra.run.dir={whole}"]).returncode == 0
    die = "+callbacks.die={_target_: fault_callbacks.DieAtStep, at_step: " + str(STEPS_PER_EPOCH + 4) + "}"
    killed = train_cli([*every_step, f"hydra.run.dir={run}", die])
    assert killed.returncode == 9, killed.stderr[-2000:]
    before_kill = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert before_kill["global_step"] == STEPS_PER_EPOCH  # the kill came 4 steps after the checkpoint
    with open(run / "csv" / "metrics.csv") as f:
        assert max(int(r["step"]) for r in csv.DictReader(f)) >= STEPS_PER_EPOCH + 3  # logged past it

    started = time.monotonic()
    resumed = train_cli([*every_step, f"hydra.run.dir={run}", "ckpt_path=last"])
    took = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def rows(folder: Path) -> list[tuple]:
        with open(folder / "csv" / "metrics.csv") as f:
            return sorted(tuple(sorted((k, v) for k, v in r.items() if v)) for r in csv.DictReader(f))

    assert rows(run) == rows(whole)  # every row once, the same values
    for tag in ("train/loss_step", "train/lr/decay", "val/acc"):
        assert _scalars(run, tag) == _scalars(whole, tag), tag
    clock_at_checkpoint = before_kill["callbacks"]["RunClock"]["wall_s"]
    wall_s = json.loads((run / "metrics.json").read_text())["wall_s"]
    assert clock_at_checkpoint < wall_s <= clock_at_checkpoint + took + 0.1
