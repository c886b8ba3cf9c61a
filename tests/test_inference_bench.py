"""The CPU inference benchmark (python -m vit_cifar.benchmark --inference) in its tiny mode: every variant runs
on the same images and lands in one complete results file. (The speed goal is the benchmark's to measure, never
a test's.)"""

from __future__ import annotations

import json
import sys

import pytest

from vit_cifar import benchmark
from vit_cifar.errors import ConfigError


def test_tiny_inference_benchmark_compares_every_variant_on_the_same_images(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    variants = ["ours_eager", "timm_eager", "ours_bf16", "ours_onnx", "ours_onnx_int8"]  # compile: too slow
    report = benchmark.run(
        ["--inference", "--tiny", "--images", "40", "--variants", *variants, "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / report["path"].rsplit("/", 1)[-1]).read_text())
    assert report["path"].endswith("-inference-tiny.json") and saved["inference"]["skipped"] == {}
    results = saved["inference"]["results"]
    assert list(results) == variants and saved["inference"]["eval_batch_size"] == 8
    for name, r in results.items():
        assert r["images_per_s"] > 0 and len(r["chunks_s"]) == 1 and r["batch_1_ms_median"] > 0, name
        assert r["over_timm_eager"] > 0 and r["top1"] is None, name  # random images: no accuracy
    # float32 variants with our weights predict what our eager network predicts
    for name in ("timm_eager", "ours_onnx"):
        assert results[name]["agreement_with_ours_eager"] == 1.0, name
        assert results[name]["max_abs_diff_probs_vs_ours_eager"] < 1e-4, name
    assert "quantisation" in results["ours_onnx_int8"]["what"]
    assert results["timm_eager"]["over_timm_eager"] == 1.0 and saved["versions"]["onnxruntime"]
    assert "infer, ours_onnx_int8" in capsys.readouterr().out


def test_without_timm_its_variant_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    argv = ["--inference", "--tiny", "--images", "8", "--latency-images", "0", "--out", str(tmp_path)]
    report = benchmark.run([*argv, "--variants", "ours_eager", "timm_eager"])
    inference = report["inference"]
    assert list(inference["results"]) == ["ours_eager"] and "timm" in inference["skipped"]["timm_eager"]
    assert report["versions"]["timm"] is None


def test_unknown_variants_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="choose among"):
        benchmark.run(["--inference", "--tiny", "--variants", "ours_tensorrt", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []
