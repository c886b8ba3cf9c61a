"""python -m vit_cifar.export: each format loaded back by the other side (onnxruntime, safetensors, timm) gives
PyTorch's outputs; runtime=onnx in evaluate and predict; formats that cannot hold a network are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config, run_module, write_image_folder
from vit_cifar.analysis.evaluation import evaluate, evaluate_checkpoint
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.errors import CheckpointError, ConfigError, VitCifarError
from vit_cifar.inference.engine import predict_probs
from vit_cifar.inference.export import export_checkpoint
from vit_cifar.inference.interop import timm_model_args
from vit_cifar.inference.runtime import check_runtime_options, load_for_inference, load_onnx, load_safetensors
from vit_cifar.models import ResNet18
from vit_cifar.predict import predict_files

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

# The tiny run's data (tests/conftest.py): 10 synthetic classes; its test split holds 100 held-back images.
DATA = {
    "_target_": "vit_cifar.data.CIFARDataModule",
    "source": "synthetic",
    "synthetic": {"train_per_class": 40, "test_per_class": 10, "noise": 60.0, "seed": 0},
    "download": False,
    "cache_dir": None,
}
EVAL_DATA = ["data=synthetic", "data.synthetic.train_per_class=40", "data.synthetic.test_per_class=10"]
# Stated in docs/deploy.md: the largest difference of a class probability between PyTorch and each export.
ONNX_TOLERANCE = 1e-5
TIMM_TOLERANCE = 1e-5  # timm's LayerNorm eps (1e-6, ours 1e-5) is all that differs


@pytest.fixture(scope="module")
def ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def onnx_file(ckpt: Path, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_checkpoint(ckpt, "onnx", output=out, data_cfg=DATA, images=100)
    assert report["check"]["max_abs_diff_probs"] <= ONNX_TOLERANCE
    assert (
        report["check"]["top1_agreement"] == 1.0
        and "100 test images of synthetic" in report["check"]["images"]
    )
    return out


def reference_probs(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    return predict_probs(load_classifier(ckpt).net, [x], torch.device("cpu"))[0]


def test_onnx_has_a_dynamic_batch_axis_and_matches_pytorch(onnx_file, ckpt):
    loaded = load_onnx(onnx_file)
    reference = load_classifier(ckpt)
    assert loaded.classes == reference.classes and loaded.net_config == reference.net_config
    assert loaded.run_config["data"]["mean"] == list(reference.run_config["data"]["mean"])
    torch.manual_seed(0)
    for batch in (1, 3, 130):  # exported with 2: any batch runs
        x = torch.randn(batch, 3, 32, 32)
        ours, theirs = reference_probs(ckpt, x), predict_probs(loaded.net, [x], torch.device("cpu"))[0]
        assert theirs.shape == (batch, 10)
        assert (ours - theirs).abs().max() <= ONNX_TOLERANCE and torch.equal(ours.argmax(1), theirs.argmax(1))


def test_onnx_export_is_checked_on_real_test_images(jpeg_archive, ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    data = {**DATA, "source": "auto", "root": str(jpeg_archive), "cache_dir": ".cache/vit_cifar"}
    report = export_checkpoint(ckpt, "onnx", output=tmp_path / "real.onnx", data_cfg=data, images=256)
    assert "256 test images of image folder" in report["check"]["images"]
    assert (
        report["check"]["max_abs_diff_probs"] <= ONNX_TOLERANCE and report["check"]["top1_agreement"] == 1.0
    )


def test_evaluate_and_predict_with_runtime_onnx_give_pytorch_top1(onnx_file, ckpt, tmp_path):
    torch_metrics = evaluate_checkpoint(ckpt, DATA, tmp_path / "torch")
    cfg = compose_config(
        [f"ckpt_path={onnx_file}", "runtime=onnx", f"output_dir={tmp_path / 'onnx'}", *EVAL_DATA],
        tmp_path / "onnx",
        config_name="eval",
    )
    onnx_metrics = evaluate(cfg)
    assert onnx_metrics["runtime"] == "onnx" and onnx_metrics["params"] == torch_metrics["params"]
    assert onnx_metrics["test_acc"] == torch_metrics["test_acc"]
    assert onnx_metrics["confusion_matrix"] == torch_metrics["confusion_matrix"]  # the same predictions

    images = write_image_folder(tmp_path / "images", per_split=(0, 3))
    by_torch, _ = predict_files(ckpt, str(images), top_k=10)
    by_onnx, _ = predict_files(onnx_file, str(images), top_k=10, runtime="onnx")
    assert len(by_onnx) == len(by_torch) == 9
    for (path_a, top_a), (path_b, top_b) in zip(by_torch, by_onnx, strict=True):
        assert path_a == path_b and top_a[0][0] == top_b[0][0]
        assert max(abs(pa - pb) for (_, pa), (_, pb) in zip(sorted(top_a), sorted(top_b), strict=True)) < 1e-5


def test_runtime_mismatches_are_refused_in_one_line(onnx_file, ckpt):
    with pytest.raises(ConfigError, match="add runtime=onnx"):
        load_for_inference(onnx_file, "torch")
    with pytest.raises(ConfigError, match="export it first"):
        load_for_inference(ckpt, "onnx")
    with pytest.raises(ConfigError, match="runtime=onnx runs on the CPU"):
        check_runtime_options("onnx", "cuda")
    with pytest.raises(ConfigError, match="unknown"):
        load_for_inference(ckpt, "tensorrt")
    damaged = onnx_file.with_name("damaged.onnx")
    damaged.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be loaded as an ONNX model"):
        load_onnx(damaged)


def test_safetensors_loads_back_without_the_lightning_checkpoint(ckpt, tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "weights.safetensors"
    report = export_checkpoint(ckpt, "safetensors", output=out, data_cfg=DATA, images=50)
    assert report["check"]["max_abs_diff_probs"] == 0.0  # the same float32 weights in the same network
    card = json.loads(out.with_suffix(".json").read_text())
    reference = load_classifier(ckpt)
    assert card["network"] == reference.net_config and card["classes"] == reference.classes
    assert card["mean"] == list(reference.run_config["data"]["mean"]) and card["image_size"] == 32
    assert card["check"]["images"].startswith("50 test images")
    ckpt.rename(ckpt.with_suffix(".moved"))  # nothing of the checkpoint is needed any more
    try:
        loaded = load_safetensors(out)
        x = torch.randn(5, 3, 32, 32)
        assert torch.equal(loaded.net(x), reference.net(x))
        # and evaluate runs it like a checkpoint
        metrics = evaluate_checkpoint(out, DATA, tmp_path / "eval")
        assert metrics["test_images"] == 100
    finally:
        ckpt.with_suffix(".moved").rename(ckpt)


def test_timm_loads_the_export_exactly_and_gives_our_outputs(ckpt, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from vit_cifar.inference.interop import exact_norm_args

    folder = tmp_path / "tiny-timm"
    report = export_checkpoint(ckpt, "timm", output=folder, data_cfg=DATA, images=100)
    assert (
        report["check"]["max_abs_diff_probs"] <= TIMM_TOLERANCE and report["check"]["top1_agreement"] == 1.0
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == load_classifier(ckpt).classes
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    # the stated arguments, as a timm user loads it (docs/deploy.md): JSON's, plus our LayerNorm epsilon
    args = {**config["model_args"], **exact_norm_args()}
    theirs = timm.create_model(config["architecture"], num_classes=config["num_classes"], **args)
    missing, unexpected = theirs.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    assert not missing and not unexpected
    # timm's own loader of a local folder reads the same config.json and weights
    from_folder = timm.create_model(f"local-dir:{folder}", pretrained=True, **exact_norm_args())
    ours = load_classifier(ckpt).net
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        logits = ours(x)
        for model in (theirs.eval(), from_folder.eval()):
            assert torch.allclose(model(x), logits, atol=1e-5, rtol=0)


def test_the_seed_vit_maps_onto_timm_with_the_same_parameter_count():
    pytest.importorskip("timm")
    from vit_cifar.inference.interop import to_timm
    from vit_cifar.models import VisionTransformer

    cfg = {"_target_": "vit_cifar.models.VisionTransformer"}  # the defaults: the seed's ViT-Tiny
    ours = VisionTransformer().eval()
    theirs = to_timm(ours, cfg)  # with our LayerNorm epsilon: the very same function
    assert sum(p.numel() for p in theirs.parameters()) == 5_356_234
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_timm_cannot_hold_a_resnet_or_a_conv_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer=conv"):
        timm_model_args({"_target_": "vit_cifar.models.VisionTransformer", "tokenizer": "conv"})
    with pytest.raises(ConfigError, match="model.pool=mean"):  # timm's mean pooling has another norm layer
        timm_model_args({"_target_": "vit_cifar.models.VisionTransformer", "pool": "mean"})
    ckpt = resnet_checkpoint(tmp_path / "resnet.ckpt")
    result = run_module(
        "vit_cifar.export", [f"ckpt_path={ckpt}", "format=timm", f"output={tmp_path / 'out'}"]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "format=timm holds our VisionTransformer only" in lines[0]
        and "ResNet18" in lines[0]
    )
    assert not (tmp_path / "out").exists()
    result = run_module("vit_cifar.export", [f"ckpt_path={ckpt}", "format=tflite"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: format='tflite' is unknown: use one of onnx, safetensors, timm"
    ]


def test_a_resnet_exports_to_safetensors_and_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt = resnet_checkpoint(tmp_path / "resnet.ckpt")
    export_checkpoint(ckpt, "safetensors", data_cfg=None, images=4)
    assert isinstance(load_safetensors(tmp_path / "resnet.safetensors").net, ResNet18)
    report = export_checkpoint(ckpt, "onnx", data_cfg=None, images=4)
    assert report["check"]["max_abs_diff_probs"] <= ONNX_TOLERANCE
    assert "random images: no data configured" in report["check"]["images"]
    assert (tmp_path / "resnet.onnx").is_file()


def test_an_export_that_fails_its_check_writes_nothing(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    from vit_cifar.inference import export as export

    monkeypatch.setattr(export, "compare", lambda *a: {"max_abs_diff_probs": 0.5, "top1_agreement": 0.0})
    with pytest.raises(VitCifarError, match="nothing was written"):
        export_checkpoint(ckpt, "safetensors", output=tmp_path / "w.safetensors", data_cfg=DATA, images=8)
    assert list(tmp_path.iterdir()) == []


def resnet_checkpoint(path: Path) -> Path:
    """A checkpoint as training writes it, of a (randomly initialised) ResNet-18."""
    torch.manual_seed(0)
    net = ResNet18(num_classes=10).eval()
    torch.save(
        {
            "hyper_parameters": {
                "net": {"_target_": "vit_cifar.models.ResNet18", "num_classes": 10, "in_chans": 3}
            },
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "classes": [f"class{i}" for i in range(10)],
        },
        path,
    )
    return path
