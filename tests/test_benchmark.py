"""``python -m vit_cifar.benchmark`` in its tiny mode: it times training's own job and the plain loop beside it,
and writes a complete results file. (The speed goals are the benchmark's to measure, never a test's.)"""

import json

import pytest
import torch

from vit_cifar import benchmark
from vit_cifar.bench import training


@pytest.fixture(autouse=True)
def _restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def _is_summary(entry: dict, repeats: int) -> bool:
    return len(entry["runs"]) == repeats and entry["mean"] > 0 and entry["std"] >= 0


def test_tiny_benchmark_times_the_training_job_and_a_plain_loop(tmp_path, capsys, monkeypatch):
    jobs = []

    def recorded(cfg):  # the training command's own job, with the benchmark's step timer among its callbacks
        jobs.append(cfg)
        return real(cfg)

    real = training.train
    monkeypatch.setattr(training, "train", recorded)
    written = benchmark.run(["--tiny", "--out", str(tmp_path), "trainer.accelerator=cpu"])
    files = list(tmp_path.glob("*-cpu-*thread*-tiny.json"))
    assert len(files) == 1 and str(files[0]) == written["path"]
    assert [cfg.task_name for cfg in jobs] == ["seed"] and jobs[0].trainer.max_steps == 1 + 2 * 2
    assert (
        jobs[0].callbacks.step_timer and jobs[0].callbacks.finite_loss
    )  # the run's callbacks, and the timer
    saved = json.loads(files[0].read_text())
    assert saved["device"]["type"] == "cpu" and saved["device"]["threads"] >= 1 and saved["device"]["cpu"]
    assert {"python", "torch", "torchvision", "lightning", "timm"} <= set(saved["versions"])
    assert len(saved["git"]["sha"]) == 40 or saved["git"]["sha"] == "unknown"
    config = saved["config"]
    assert (config["steps"], config["warmup"], config["repeats"]) == (2, 1, 2)
    assert config["recipe"]["model"]["embed_dim"] == 32 and config["recipe"]["optim"]["lr"] == 1e-3
    eager = saved["training"]["eager"]
    assert _is_summary(eager["lightning"], 2) and _is_summary(eager["plain"], 2)
    assert eager["lightning_overhead"] == pytest.approx(
        eager["plain"]["mean"] / eager["lightning"]["mean"] - 1
    )
    assert eager["compiled"] is False and eager["precision"] == "32-true"
    # on CPU, also per second of process CPU time, which other processes on a shared machine do not slow
    assert _is_summary(eager["lightning"]["per_cpu_second"], 2) and _is_summary(
        eager["plain"]["per_cpu_second"], 2
    )
    assert eager["lightning"]["first_steps_s"] > 0 and "compiled" not in saved["training"]
    assert saved["load_average"]["before"] and saved["load_average"]["after"]
    printed = capsys.readouterr().out
    assert "Lightning overhead" in printed and "written:" in printed


def test_compile_times_eager_and_compiled_and_states_the_compile_time_apart(tmp_path, capsys):
    # the eager backend only captures the graphs: the same path as Inductor, without minutes of code generation
    argv = ["--tiny", "--compile", "--out", str(tmp_path), "experiment=cpu_hour", "compile_backend=eager"]
    saved = benchmark.run(["--experiment", "cpu_hour", *argv[:4], *argv[5:]])
    compiled = saved["training"]["compiled"]
    assert saved["training"]["eager"]["compiled"] is False and compiled["compiled"] is True
    assert _is_summary(compiled["lightning"], 2) and _is_summary(compiled["plain"], 2)
    assert saved["config"]["warmup"] == 3  # recompiles stay out of the timed windows
    assert saved["compile_s"] == pytest.approx(
        compiled["lightning"]["first_steps_s"] - saved["training"]["eager"]["lightning"]["first_steps_s"]
    )
    assert saved["config"]["recipe"]["task_name"] == "cpu_hour" and "compile time" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--steps", "0"], "error: --steps=0 must be at least 1"),
        (["--warmup", "0"], "error: --warmup=0 must be at least 1"),
        (["--experiment", "nosuch"], "Could not find 'experiment/nosuch'"),
        (["data.batch_sise=3"], "batch_sise"),
    ],
)
def test_bad_flags_stop_with_one_line_and_write_nothing(argv, error, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--tiny", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert error in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_a_gpu_trainer_without_a_gpu_stops_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--tiny", "--out", str(tmp_path), "trainer=gpu"])
    assert exit_info.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_on_a_gpu_the_windows_synchronise_at_their_edges_only_and_the_gpu_is_named(monkeypatch, tmp_path):
    from types import SimpleNamespace

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    clock = training.Clock(torch.device("cuda"), warmup=2, steps=3)  # the start
    for step in range(1, 9):
        clock.mark(after_step=step)
    assert len(synced) == 4 and len(clock.marks) == 4  # the start, after step 2, 5 and 8: nothing inside
    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    info = benchmark.environment(torch.device("cuda"))["device"]
    assert info["capability"] == "9.0" and info["name"] == "NVIDIA H200"
    assert benchmark.result_path(tmp_path, info, "").name.endswith("-cuda-nvidia-h200.json")
