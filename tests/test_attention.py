"""Attention maps and rollout: the pure functions against hand-computed values, the explicit attention path
against SDPA, and ``python -m vit_cifar.visualize`` on a tiny trained checkpoint."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import ROOT, compose_config, run_module
from vit_cifar.analysis.attention import (
    attention_rollout,
    cls_patch_maps,
    discard_lowest,
    fuse_heads,
    scale_to_unit,
    upsample_maps,
)
from vit_cifar.analysis.explain import visualize
from vit_cifar.checkpoints.loading import load_classifier
from vit_cifar.config.entry import run_cli
from vit_cifar.data.datamodule import interleaved_order
from vit_cifar.errors import CheckpointError, ConfigError
from vit_cifar.models.vit import Attention, Mlp, VisionTransformer

pytestmark = pytest.mark.e2e  # trains or runs the commands: not in the unit tier (make test-unit)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The data the attention_ckpt fixture was trained on (see conftest.py), for the visualize runs.
FIXTURE_DATA = [
    "data=synthetic",
    "data.synthetic.train_per_class=40",
    "data.synthetic.test_per_class=10",
    "data.val_size=100",
    "data.num_workers=0",
]


def random_attention(batch: int, heads: int, tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, tokens, tokens, generator=g).mul(3).softmax(dim=-1)


# ------------------------------------------------------------------------------------------------ rollout


def test_rollout_of_a_hand_built_two_layer_example():
    # Layer 1 has two heads whose mean is A1; layer 2 has one pattern A2 in both heads. Tokens: CLS, p1, p2.
    head_a = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    head_b = torch.tensor([[0.0, 1, 0], [0, 1, 0], [0, 0, 1]])
    a2 = torch.tensor([[0.0, 0.5, 0.5], [1, 0, 0], [0, 0, 1]])
    layer1 = torch.stack([head_a, head_b])[None]  # (1, 2, 3, 3)
    layer2 = torch.stack([a2, a2])[None]
    # By hand: A1 = mean = [[.5,.5,0],[0,1,0],[0,.5,.5]]; (A1 + I) / 2 = [[.75,.25,0],[0,1,0],[0,.25,.75]];
    # (A2 + I) / 2 = [[.5,.25,.25],[.5,.5,0],[0,0,1]]; rollout = (A2 + I)/2 @ (A1 + I)/2:
    expected = torch.tensor([[3 / 8, 7 / 16, 3 / 16], [3 / 8, 5 / 8, 0], [0, 1 / 4, 3 / 4]])
    rollout = attention_rollout([layer1, layer2], head_fusion="mean")
    assert torch.allclose(rollout[0], expected)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5, 0.9])
def test_every_rollout_row_is_a_distribution(head_fusion, discard_ratio):
    attentions = [random_attention(2, 3, 17, seed) for seed in range(4)]
    rollout = attention_rollout(attentions, head_fusion, discard_ratio)
    assert rollout.shape == (2, 17, 17)
    assert (rollout >= 0).all()
    assert torch.allclose(rollout.sum(dim=-1), torch.ones(2, 17))
    # gradient-weighted: the positive part of attention * gradient may zero whole rows; rows still sum to 1
    gradients = [torch.randn_like(a) for a in attentions]
    weighted = attention_rollout(attentions, head_fusion, discard_ratio, gradients=gradients)
    assert torch.allclose(weighted.sum(dim=-1), torch.ones(2, 17))


def test_head_fusion_modes():
    attn = random_attention(2, 3, 5)
    assert torch.equal(fuse_heads(attn, "max"), attn.max(dim=1).values)
    assert torch.equal(fuse_heads(attn, "min"), attn.min(dim=1).values)
    assert torch.allclose(fuse_heads(attn, "mean"), (attn[:, 0] + attn[:, 1] + attn[:, 2]) / 3)
    assert not torch.allclose(attention_rollout([attn], "max"), attention_rollout([attn], "min"))


def test_discard_drops_the_weakest_patch_links_per_row_but_never_the_cls_token():
    row = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.35])  # CLS first: the weakest link, and kept
    attn = torch.stack([row, row.flip(0)])[None]  # (1, 2, 5)
    out = discard_lowest(attn, 0.5)  # 2 of the 4 patch links per row
    assert torch.equal(out[0, 0], torch.tensor([0.05, 0, 0, 0.3, 0.35]))
    assert torch.equal(out[0, 1], torch.tensor([0.35, 0.3, 0.2, 0, 0]))
    assert torch.equal(discard_lowest(attn, 0.0), attn)


def test_gradient_weighted_rollout_with_unit_gradients_is_plain_rollout():
    attentions = [random_attention(2, 3, 10, seed) for seed in range(3)]
    ones = [torch.ones_like(a) for a in attentions]
    assert torch.allclose(attention_rollout(attentions, gradients=ones), attention_rollout(attentions))


# ------------------------------------------------------------------------------------------------ maps


def test_maps_land_where_their_patch_is_in_the_image():
    """Perturb one patch of an image: PatchEmbed changes one token, and its CLS map cell and upsampled
    region sit at that patch's place (no transposed or shifted grid). Patch 8 on 32x32: a 4x4 grid."""
    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2).eval()
    grid = net.patch_embed.grid_size
    assert grid == 4
    x = torch.zeros(1, 3, 32, 32)
    x2 = x.clone()
    x2[..., 8:16, 16:24] = 1.0  # the patch in grid row 1, column 2
    with torch.no_grad():
        changed = (net.patch_embed(x) - net.patch_embed(x2)).abs().sum(-1)[0]  # (16,)
    token = int(changed.argmax()) + 1  # +1: the CLS token comes first
    assert changed.nonzero().flatten().tolist() == [token - 1] and token == 1 + 1 * grid + 2
    attn = torch.zeros(1, 2, 17, 17)
    attn[:, :, 0, token] = 1.0
    maps = cls_patch_maps(attn, grid)  # (1, 2, 4, 4)
    assert maps.shape == (1, 2, 4, 4) and maps[0, :, 1, 2].tolist() == [1.0, 1.0] and maps.sum() == 2
    up = upsample_maps(maps, 32)  # (1, 2, 32, 32)
    assert up.shape == (1, 2, 32, 32)
    assert up[0, 0, 8:16, 16:24].mean() > 0.5 > up[0, 0].mean()
    assert torch.allclose(upsample_maps(torch.full((3, 8, 8), 0.25), 32), torch.full((3, 32, 32), 0.25))


def test_scale_to_unit_stretches_each_map_and_leaves_flat_maps_at_zero():
    maps = torch.stack([torch.arange(16.0).view(4, 4), torch.full((4, 4), 3.0)])
    scaled = scale_to_unit(maps)
    assert scaled[0].min() == 0 and scaled[0].max() == 1
    assert torch.equal(scaled[1], torch.zeros(4, 4))


# -------------------------------------------------------------------------------------------- explicit path


def test_explicit_attention_equals_what_sdpa_computes():
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3).eval()
    x = torch.randn(2, 17, 24)
    with torch.no_grad():
        fused, none = attn(x)
        explicit, weights = attn(x, return_attn=True)
    assert none is None and weights.shape == (2, 3, 17, 17)
    assert torch.allclose(explicit, fused, atol=1e-5)
    # The weights against softmax(q k^T / sqrt(d)) from the qkv projection's own matrices.
    wq, wk, _ = attn.qkv.weight.detach().chunk(3)  # each (24, 24)
    q = (x @ wq.T).view(2, 17, 3, 8).transpose(1, 2)  # (B, heads, N, head_dim)
    k = (x @ wk.T).view(2, 17, 3, 8).transpose(1, 2)
    assert torch.allclose(weights, (q @ k.transpose(-2, -1) / 8**0.5).softmax(dim=-1), atol=1e-6)


def test_training_forward_stays_on_sdpa_and_the_explicit_path_gives_the_same_logits(monkeypatch):
    torch.manual_seed(0)
    net = VisionTransformer(embed_dim=24, depth=3, num_heads=3).eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        logits = net(x)
        assert len(calls) == 3  # the fused kernel, once per block
        explicit, attentions = net.forward_with_attention(x)
        assert len(calls) == 3  # the explicit path does not call it
    assert torch.allclose(explicit, logits, atol=1e-5)
    assert len(attentions) == 3 and attentions[0].shape == (2, 3, 65, 65)


# ------------------------------------------------------------------------------------------------ the command


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def check_outputs(out: Path) -> str:
    """Every figure is a valid, non-blank PNG of sensible size and the index references exactly those."""
    index = (out / "index.md").read_text()
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures and sorted(set(re.findall(r"\]\(([^)]+\.png)\)", index))) == figures
    for name in figures:
        width, height = png_size(out / name)
        assert 300 <= width <= 4000 and 300 <= height <= 4000, (name, width, height)
        with Image.open(out / name) as img:
            assert np.asarray(img.convert("L")).std() > 10  # drawn, not blank
    return index


def index_rows(index: str, section: str) -> list[list[str]]:
    """The table rows of one index section: [#, image, true, predicted, p, figure]."""
    part = index.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in part.splitlines() if re.match(r"\| \d+ \|", line)]
    return [[c.strip() for c in row] for row in rows]


def test_cli_writes_figures_for_test_images_and_an_index(attention_ckpt, tmp_path):
    out = tmp_path / "attention"
    args = [
        f"ckpt_path={attention_ckpt}",
        *FIXTURE_DATA,
        f"output_dir={out}",
        "num_images=2",
        "num_misclassified=2",
        "grad_rollout_class=predicted",
    ]
    result = run_module("vit_cifar.visualize", args)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and str(out) in result.stdout
    index = check_outputs(out)
    samples = sorted(out.glob("sample_*.png"))
    assert len(samples) == 2 and (out / "rollout_samples.png").is_file()
    assert "gradient-weighted rollout toward predicted" in index and "patch grid 4x4" in index
    assert len(index_rows(index, "Test images")) == 2
    # Hydra keeps no run folder or log for this command: only output_dir is written.
    assert not (ROOT / "visualize.log").exists() and not (ROOT / ".hydra").exists()


def test_misclassified_are_the_first_errors_in_the_seeded_order(attention_ckpt, tmp_path):
    out = tmp_path / "attention"
    cfg = compose_config(
        [
            f"ckpt_path={attention_ckpt}",
            *FIXTURE_DATA,
            f"output_dir={out}",
            "num_images=2",
            "num_misclassified=3",
            "layers=[-1]",
            "head_fusion=max",
            "discard_ratio=0.5",
        ],
        out,
        config_name="visualize",
    )
    visualize(cfg)
    index = check_outputs(out)
    # Independently: the model's errors on the synthetic test set, in the permutation drawn with seed 42.
    from vit_cifar.data.sources import make_synthetic
    from vit_cifar.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_transform

    arrays = make_synthetic(10, 40, 10, 32, 60.0, 0)
    kept = interleaved_order(arrays.test_y, 0)  # the DataModule's evaluation order (data.split_seed=0)
    test_x, test_y = arrays.test_x[kept], arrays.test_y[kept]
    x = eval_transform(CIFAR10_MEAN, CIFAR10_STD)(torch.from_numpy(test_x).permute(0, 3, 1, 2))
    with torch.no_grad():
        wrong = load_classifier(attention_ckpt).net(x).argmax(1).numpy() != test_y
    order = np.random.default_rng(42).permutation(len(test_y))
    # The first errors after the two sampled images, so that no image is in both sections.
    expected = [int(i) for i in order[2:] if wrong[i]][:3]
    test_index = lambda row: int(row[1].removeprefix("test image "))
    rows = index_rows(index, "Misclassified test images")
    assert [test_index(r) for r in rows] == expected
    assert all(r[2] != r[3] for r in rows)  # titled true -> predicted, and they differ
    assert [test_index(r) for r in index_rows(index, "Test images")] == list(order[:2])
    assert "layers 1 (0-based)" in index and "head fusion max, discard ratio 0.5" in index


def test_inputs_explain_given_files_and_replace_only_this_commands_old_files(attention_ckpt, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(folder / "wide cat.png")  # resized to 32x32
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(folder / "b.jpg")
    out = tmp_path / "attention"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sample_09_test1.png").write_bytes(b"stale")
    cfg = compose_config(
        [f"ckpt_path={attention_ckpt}", f"inputs={folder}", f"output_dir={out}"], out, config_name="visualize"
    )
    visualize(cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.md",
        "input_01_b.png",
        "input_02_wide_cat.png",
        "notes.txt",
        "rollout_inputs.png",
    ]
    rows = index_rows(check_outputs(out), "Your images")
    assert [r[1] for r in rows] == [str(folder / "b.jpg"), str(folder / "wide cat.png")]
    assert all(r[2] == "-" for r in rows)  # no labels, so no misclassified section either


def write_checkpoint(path: Path, kind: str) -> Path:
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "plain state dict":
        torch.save({"weight": torch.zeros(2)}, path)
    else:  # a network of the project's models package without attention
        net = {"_target_": "vit_cifar.models.vit.Mlp", "dim": 4, "hidden_dim": 8}
        state = {f"net.{k}": v for k, v in Mlp(4, 8).state_dict().items()}
        torch.save({"hyper_parameters": {"net": net}, "state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("corrupt", "cannot be read safely"),
        ("plain state dict", "not a vit-cifar training checkpoint"),
        ("non-ViT network", "holds a Mlp, which has no attention to show"),
    ],
)
def test_bad_checkpoints_stop_with_one_line_and_write_nothing(kind, message, tmp_path, capsys):
    """Through run_cli, what main runs: the exit code and the one line on stderr, as the shell sees them."""
    ckpt = write_checkpoint(tmp_path / "model.ckpt", kind)
    out = tmp_path / "attention"
    cfg = compose_config([f"ckpt_path={ckpt}", f"output_dir={out}"], out, config_name="visualize")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(visualize, cfg)
    assert exit_info.value.code == CheckpointError.exit_code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: checkpoint {ckpt}") and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("head_fusion=avg", "head_fusion='avg' is unknown"),
        ("discard_ratio=1.0", "discard_ratio=1.0 is out of range: use a number in [0, 1)"),
        (
            "layers=[0,2]",
            "layers=2 is out of range: use an integer in [-2, 1] (a block of this 2-block model)",
        ),
        ("grad_rollout_class=zebra", "grad_rollout_class='zebra' is unknown: use one of predicted, "),
        ("num_images=-1", "num_images=-1 is out of range: use an integer >= 0"),
        ("inputs=/no/such/image.png", "inputs: /no/such/image.png: no such file or folder"),
        (f"inputs={__file__}", "test_attention.py is not a .bmp/.jpeg/.jpg/.png/.webp image"),
        ("device=tpu9", "device=tpu9 is unknown: use cpu, cuda"),
    ],
)
def test_bad_settings_name_the_key_and_write_nothing(attention_ckpt, tmp_path, override, message):
    out = tmp_path / "attention"
    cfg = compose_config(
        [f"ckpt_path={attention_ckpt}", *FIXTURE_DATA, f"output_dir={out}", override],
        out,
        config_name="visualize",
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        visualize(cfg)
    assert not out.exists() and not list(tmp_path.glob(".attention.*"))


def test_an_unreadable_input_is_skipped_and_reported_while_the_others_are_explained(attention_ckpt, tmp_path):
    """As predict does: the readable images are explained and published, the broken file is named on stderr
    and in the index, and the exit code (3) says that something was skipped."""
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "attention"
    result = run_module(
        "vit_cifar.visualize", [f"ckpt_path={attention_ckpt}", f"inputs={folder}", f"output_dir={out}"]
    )
    assert result.returncode == 3, result.stderr
    assert f"skipped {folder / 'broken.jpg'}" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 inputs skipped")
    assert (out / "input_01_good.png").is_file() and not list(out.glob("input_*broken*"))
    index = (out / "index.md").read_text()
    assert "Skipped as unreadable" in index and "broken.jpg" in index


def test_maps_carry_a_colour_bar():
    """Every attention figure says what its colours mean: one colour bar from weakest to strongest."""
    from vit_cifar.analysis.attention import attention_figure, rollout_overview

    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    maps = {0: torch.rand(2, 8, 8)}
    for fig in (
        attention_figure(image, maps, torch.rand(8, 8), "x"),
        rollout_overview(image[None].repeat(2, 1, 1, 1), torch.rand(2, 8, 8), ["a", "b"], "y"),
    ):
        bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1
        assert [t.get_text() for t in bars[0].get_yticklabels()] == ["weakest", "", "strongest"]
