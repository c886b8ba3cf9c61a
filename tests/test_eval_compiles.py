"""Evaluation under compile: full-size validation and test splits (5,000 and 10,000 images, evaluated in
batches of 512, which leave remainders of 392 and 272) add one static graph, not one per remainder batch."""

import pytest
import torch
from torch._dynamo import register_backend

from conftest import QUIET, compose_config
from vit_cifar.training.run import train

pytestmark = pytest.mark.e2e

graphs: list[tuple[int, ...]] = []


@register_backend(name="vit_cifar_test_batch_shapes")
def _record_batch_shapes(gm, example_inputs):
    """Dynamo's eager backend, recording the image batch shape of each graph it is handed."""
    graphs.extend(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor) and t.ndim == 4)
    return gm.forward


def test_full_size_evaluation_compiles_one_graph_beside_trainings(tmp_path):
    graphs.clear()
    overrides = [*QUIET, "model.embed_dim=16", "model.depth=1", "model.num_heads=1", "model.patch_size=8"]
    overrides += [
        "data=synthetic",
        "data.synthetic.train_per_class=510",
        "data.synthetic.test_per_class=1000",
    ]
    overrides += ["data.val_size=5000", "data.batch_size=32", "data.eval_batch_size=512", "aug=none"]
    overrides += ["trainer=cpu", "trainer.max_epochs=1", "scheduler.warmup_epochs=0", "~logger"]
    overrides += ["callbacks.lr_monitor=null", "compile=true", "compile_backend=vit_cifar_test_batch_shapes"]
    metrics = train(compose_config(overrides, tmp_path))
    assert metrics["val_images"] == 5000 and metrics["test_images"] == 10000
    images = sorted(shape for shape in graphs if shape[1:] == (3, 32, 32))  # not the patch embedding's weight
    assert images == [(32, 3, 32, 32)]  # training's one graph: evaluation runs eagerly
    assert metrics["compile"] is True and metrics["eager_calls"] == 0
