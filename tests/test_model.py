import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

from vit_cifar.models import VisionTransformer


def test_vit_tiny_has_the_seed_parameter_count():
    model = VisionTransformer()  # defaults are the seed's ViT-Tiny
    assert sum(p.numel() for p in model.parameters()) == 5_356_234
    assert model.patch_embed.num_patches == 64
    assert model.pos_embed.shape == (1, 65, 192)
    assert model.blocks[0].attn.qkv.bias is None


def test_output_shapes_follow_the_config():
    model = VisionTransformer(embed_dim=48, depth=2, num_heads=3, num_classes=7, patch_size=8)
    logits, attentions = model.forward_with_attention(torch.randn(5, 3, 32, 32))
    assert logits.shape == (5, 7)
    assert len(attentions) == 2
    assert attentions[0].shape == (5, 3, 17, 17)  # 16 patches + CLS
    assert torch.allclose(attentions[1].sum(-1), torch.ones(5, 3, 17))


def test_explicit_attention_path_matches_sdpa():
    torch.manual_seed(0)
    model = VisionTransformer(embed_dim=64, depth=3, num_heads=4).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fused = model(x)
        explicit, _ = model.forward_with_attention(x)
        # and block by block: the attention output itself, against SDPA on the same q, k, v
        attn = model.blocks[0].attn
        tokens = model.blocks[0].norm1(model._tokens(x))
        out_explicit, weights = attn(tokens, return_attn=True)
        out_fused, none = attn(tokens)
        q, k, v = attn.qkv(tokens).reshape(4, 65, 3, 4, 16).permute(2, 0, 3, 1, 4)
        manual = torch.softmax(q @ k.transpose(-2, -1) / 16**0.5, dim=-1)
    assert none is None
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert torch.allclose(out_fused, out_explicit, atol=1e-5)
    assert torch.allclose(weights, manual, atol=1e-6)
    assert torch.allclose(F.scaled_dot_product_attention(q, k, v), manual @ v, atol=1e-5)


def test_cpu_bf16_training_takes_the_explicit_path_with_sdpas_outputs_and_gradients(monkeypatch):
    """SDPA's bf16 backward on CPU is the slow part of the step: with gradients under bf16 autocast the blocks
    compute attention explicitly; without gradients, or in float32, they call SDPA. Same function either way."""
    torch.manual_seed(0)
    net = VisionTransformer(embed_dim=64, depth=2, num_heads=4, tokenizer="conv", drop_rate=0.0)
    x = torch.randn(4, 3, 32, 32)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))

    def logits_and_grads(grad: bool, bf16: bool):
        net.zero_grad()
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(x).float()
        if grad:
            logits.logsumexp(-1).sum().backward()
        qkv_grads = [p.grad.clone() for p in net.blocks[0].attn.qkv.parameters()] if grad else None
        return logits.detach(), qkv_grads

    explicit, explicit_grads = logits_and_grads(grad=True, bf16=True)
    assert calls == []
    fused, _ = logits_and_grads(grad=False, bf16=True)
    assert len(calls) == 2  # once per block
    assert torch.allclose(explicit, fused, atol=0.05)  # bf16 rounding apart
    _, fused_grads = logits_and_grads(grad=True, bf16=False)  # float32 trains on SDPA
    assert len(calls) == 4
    for g_explicit, g_fused in zip(explicit_grads, fused_grads, strict=True):
        assert torch.allclose(g_explicit, g_fused, atol=0.05 * g_fused.abs().max())


def test_conv_tokenizer_runs_channels_last_with_the_same_tokens():
    torch.manual_seed(0)
    net = VisionTransformer(embed_dim=64, depth=1, num_heads=4, tokenizer="conv").eval()
    x = torch.randn(2, 3, 32, 32)
    layouts = []
    net.patch_embed.proj[0].register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        tokens = net.patch_embed(x)
        reference = net.patch_embed.norm(net.patch_embed.proj(x).flatten(2).transpose(1, 2))  # NCHW
    assert layouts == [True, False]
    assert torch.allclose(tokens, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embed_dim": 192, "num_heads": 5}, "not divisible by model.num_heads=5"),
        ({"img_size": 32, "patch_size": 5}, "does not divide model.img_size=32"),
        ({"tokenizer": "conv", "img_size": 24, "patch_size": 3}, "must be a power of two"),
    ],
)
def test_impossible_shapes_fail_at_construction(kwargs, message):
    """What the network's arithmetic needs of its arguments (each argument's own range is the schema's)."""
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**kwargs)


def test_stochastic_depth_rises_linearly_and_is_off_in_eval():
    model = VisionTransformer(embed_dim=32, depth=5, num_heads=2, drop_path_rate=0.2)
    rates = [b.drop_path1.p if isinstance(b.drop_path1, StochasticDepth) else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    drop = StochasticDepth(0.5, mode="row")
    x = torch.ones(2000, 4)
    kept = drop.train()(x)[:, 0]
    assert set(kept.unique().tolist()) <= {0.0, 2.0}  # dropped, or kept and rescaled by 1 / 0.5
    assert 0.4 < (kept > 0).float().mean() < 0.6
    assert torch.equal(drop.eval()(x), x)


def test_dropout_is_where_the_seed_puts_it():
    model = VisionTransformer(drop_rate=0.1, attn_drop_rate=0.0)
    block = model.blocks[0]
    assert block.mlp.drop1.p == block.mlp.drop2.p == block.attn.proj_drop.p == 0.1
    assert block.attn.attn_drop.p == 0.0


@pytest.mark.parametrize(("patch_size", "stages"), [(1, 1), (2, 1), (4, 2), (8, 3)])
def test_conv_tokenizer_gives_the_patch_grid_from_conv_stages(patch_size, stages):
    """The CCT-style tokenizer halves the grid once per stage (max-pool stride 2) down to one token per
    ``patch_size`` pixels, so it gives the same tokens as the patch embedding and attention maps still fit."""
    torch.manual_seed(0)
    model = VisionTransformer(
        embed_dim=32, depth=1, num_heads=2, patch_size=patch_size, tokenizer="conv"
    ).eval()
    tokenizer = model.patch_embed
    convs = [m for m in tokenizer.proj if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in tokenizer.proj if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == stages and len(pools) == (stages if patch_size > 1 else 0)
    assert convs[0].in_channels == 3 and convs[-1].out_channels == 32
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    x = torch.randn(2, 3, 32, 32)
    grid = 32 // patch_size
    assert tokenizer.grid_size == grid and tokenizer.img_size == 32
    assert tokenizer(x).shape == (2, grid * grid, 32)
    with torch.no_grad():
        logits, attentions = model.forward_with_attention(x)
        assert torch.allclose(model(x), logits, atol=1e-5)
    assert attentions[0].shape == (2, 2, grid * grid + 1, grid * grid + 1)


def test_conv_tokenizer_sees_neighbouring_pixels_across_token_borders():
    """Unlike a patch embedding, a conv token depends on pixels outside its own 4x4 square (overlapping
    receptive fields), and the tokenizer's convolutions start from ReLU-scaled (Kaiming) weights."""
    torch.manual_seed(0)
    tokenizer = VisionTransformer(embed_dim=32, depth=1, num_heads=2, tokenizer="conv").patch_embed
    patch = VisionTransformer(embed_dim=32, depth=1, num_heads=2).patch_embed
    x = torch.randn(1, 3, 32, 32)
    moved = x.clone()
    moved[..., 4, 4] += 10.0  # a pixel of token (1, 1), next to token (0, 0)
    with torch.no_grad():
        conv_change = (tokenizer(moved) - tokenizer(x)).abs().sum(-1)[0]
        patch_change = (patch(moved) - patch(x)).abs().sum(-1)[0]
    assert conv_change[0] > 0 and patch_change[0] == 0  # token (0, 0): row-major index 0
    first = tokenizer.proj[0].weight
    assert first.std().item() == pytest.approx((2 / (3 * 9)) ** 0.5, rel=0.25)


def test_mean_pooling_classifies_from_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    model = VisionTransformer(embed_dim=32, depth=1, num_heads=2, pool="mean").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = model.blocks[0](model._tokens(x))
        expected = model.head(model.norm(tokens[:, 1:].mean(dim=1)))  # the 64 patch tokens, not the CLS token
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert torch.allclose(model.forward_with_attention(x)[0], expected, atol=1e-5)
        model.pool = "cls"
        assert not torch.allclose(model(x), expected, atol=1e-3)


@pytest.mark.parametrize("tta", [True, False, "flip_shift"])
def test_tta_validates_on_the_mean_softmax_of_image_and_mirror(tta):
    from vit_cifar.inference.engine import class_probs
    from vit_cifar.training.module import ClassifierModule

    torch.manual_seed(0)
    module = ClassifierModule(
        net={"_target_": "vit_cifar.models.VisionTransformer", "embed_dim": 16, "depth": 1, "num_heads": 2},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
        scheduler={},
        tta=tta,
    ).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with torch.no_grad():
        seen = module.validation_step((x, y), 0)
        plain = module.net(x).softmax(-1)
        mirrored = module.net(x.flip(-1)).softmax(-1)
        assert (module.net(x) - module.net(x.flip(-1))).abs().max() > 1e-3  # the mirror really differs
        shifted = class_probs(module.net, x, "flip_shift")  # its views: test_evaluate.py
    expected = {True: ((plain + mirrored) / 2).log(), False: module.net(x), "flip_shift": shifted.log()}[tta]
    assert torch.allclose(seen, expected, atol=1e-5)
