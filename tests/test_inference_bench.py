"""The CPU inference benchmark (python -m vit_cifar.benchmark --inference) in its tiny mode: every variant runs
on the same images and lands in one complete results file. (The speed goal is the benchmark's to measure, never
a test's.)"""

from __future__ import annotations

import json

import pytest

from vit_cifar.bench import report as benchmark
from vit_cifar.errors import ConfigError


def test_tiny_inference_benchmark_compares_every_variant_on_the_same_images(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    variants = [
        "ours_eager",
        "timm_eager",
        "ours_onnx",
        "ours_onnx_int8",
    ]  # torch.compile: too slow for a test
    report = benchmark.run(
        ["--inference", "--tiny", "--images", "40", "--variants", *variants, "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / report["path"].rsplit("/", 1)[-1]).read_text())
    assert report["path"].endswith("-inference-tiny.json") and saved["skipped"] == {}
    results = saved["results"]
    assert list(results) == ["timm_eager", "ours_eager", "ours_onnx", "ours_onnx_int8"]
    batch = saved["config"]["eval_batch_size"]
    for name, r in results.items():
        assert r[f"batch_{batch}"]["images_per_s"] > 0 and len(r[f"batch_{batch}"]["chunks_s"]) == 1, name
        assert r["batch_1"]["images"] == 4 and r["batch_1"]["latency_ms_median"] > 0, name
        assert r["over_timm_eager"] > 0 and "agreement_with_ours_eager" in r, name
    # float32 variants with our weights predict what our eager network predicts
    for name in ("timm_eager", "ours_onnx"):
        assert results[name]["agreement_with_ours_eager"] == 1.0, name
        assert results[name]["max_abs_diff_probs_vs_ours_eager"] < 1e-4, name
    assert results["ours_onnx_int8"]["quantised"] and not results["ours_onnx"]["quantised"]
    assert results["timm_eager"]["over_timm_eager"] == 1.0
    assert saved["goal"]["met"] in (True, False) and saved["versions"]["onnxruntime"]
    assert "top1" not in results["ours_eager"]  # random images: no accuracy to report
    printed = capsys.readouterr().out
    assert "| ours_onnx_int8 |" in printed and "goal:" in printed


def test_unknown_variants_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="choose among"):
        benchmark.run(["--inference", "--tiny", "--variants", "ours_tensorrt", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []
