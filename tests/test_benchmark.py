"""The benchmark harness in its tiny mode: it runs every measurement and writes a complete results file.
(The speed goals are the benchmark's to measure, never a test's.)"""

import json
import sys

import pytest
import torch

from vit_cifar import benchmark
from vit_cifar.bench import report, settings, training


@pytest.fixture(autouse=True)
def _restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def _is_summary(entry: dict, repeats: int) -> bool:
    return len(entry["runs"]) == repeats and entry["mean"] > 0 and entry["std"] >= 0


def test_tiny_benchmark_writes_a_complete_results_file(tmp_path, capsys):
    written = report.run(["--tiny", "--device", "cpu", "--out", str(tmp_path)])
    files = list(tmp_path.glob("*-cpu-*thread*-tiny.json"))
    assert len(files) == 1 and str(files[0]) == written["path"]
    saved = json.loads(files[0].read_text())
    assert saved["device"]["type"] == "cpu" and saved["device"]["threads"] >= 1
    assert {"python", "torch", "torchvision", "lightning", "timm"} <= set(saved["versions"])
    assert len(saved["git"]["sha"]) == 40 or saved["git"]["sha"] == "unknown"
    config = saved["config"]
    assert config["tiny"] and config["repeats"] == 2 and config["precision"] == "32-true"
    assert config["recipe"]["model"]["embed_dim"] == 32 and config["recipe"]["optim"]["lr"] == 1e-3
    train = saved["training"]
    assert _is_summary(train["lightning"], 2) and _is_summary(train["plain"], 2)
    assert train["lightning_overhead"] == pytest.approx(
        train["plain"]["mean"] / train["lightning"]["mean"] - 1
    )
    assert isinstance(train["met"], bool)
    # on CPU, also per second of process CPU time, which other processes on a shared machine do not slow
    assert _is_summary(train["lightning"]["per_cpu_second"], 2) and "lightning_overhead_cpu_time" in train
    infer = saved["inference"]
    assert _is_summary(infer["ours"], 2)
    if saved["versions"]["timm"]:  # same shape: the same parameter count
        assert _is_summary(infer["timm"], 2) and infer["params"]["timm"] == infer["params"]["ours"]
    for key in ("cpu_pipeline_per_worker", "uint8_index_per_worker", "device_batches", "device_augment"):
        assert _is_summary(saved["augmentation"][key], 2), key
    optimizer = saved["optimizer"]  # fused AdamW against foreach: the evidence for optim.fused's choice
    assert _is_summary(optimizer["fused"], 2) and _is_summary(optimizer["foreach"], 2)
    assert saved["load_average"]["before"] and saved["load_average"]["after"]
    printed = capsys.readouterr().out
    assert "Lightning overhead" in printed and "written:" in printed


def test_without_timm_the_comparison_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    chosen = settings.settings_from(settings.parse_args(["--tiny", "--device", "cpu", "--repeats", "1"]))
    result = training.measure_inference(chosen, log=lambda *_: None)
    assert "timm" not in result and "ours_over_timm" not in result
    assert "timm is not installed" in result["timm_note"] and result["ours"]["mean"] > 0
    assert report.versions()["timm"] is None


def test_bad_flags_stop_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--tiny", "--steps", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --steps=0 must be at least 1"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            benchmark.main(["--device", "cuda"])
        assert "no CUDA device" in capsys.readouterr().err
