"""ViT-Tiny for 32x32 images: the seed's architecture, Pre-LN, SDPA attention.

Layout (10 classes, defaults): 5,356,234 parameters. Against timm's default ViT layout the qkv projection has no
bias and the patch embedding ends in a LayerNorm (as in lucidrains' vit-pytorch), which is what that count implies.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from vit_cifar.errors import OPEN_PROBABILITY, POSITIVE_INT, Choice, Flag, Number


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear projection (a strided conv) -> LayerNorm."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = self.projection(patch_size, in_chans, embed_dim)  # (B, C, H, W) -> (B, D, H/p, W/p)
        self.norm = nn.LayerNorm(embed_dim)

    @staticmethod
    def projection(patch_size: int, in_chans: int, embed_dim: int) -> nn.Module:
        return nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, D, H/p, W/p) -> (B, N, D)


class ConvTokenizer(PatchEmbed):
    """A convolutional tokenizer (Compact Convolutional Transformers, Hassani et al. 2021): stages of conv 3x3 ->
    ReLU -> max-pool 3x3 stride 2, each halving the grid, to :class:`PatchEmbed`'s token grid (attention maps
    work unchanged), but with locality built in, which short schedules cannot learn from data."""

    @staticmethod
    def projection(patch_size: int, in_chans: int, embed_dim: int) -> nn.Module:
        stages = max(1, int(math.log2(patch_size)))  # patch 1: one conv stage, no pooling
        widths = [in_chans] + [max(embed_dim // 2 ** (stages - 1 - i), 16) for i in range(stages)]
        widths[-1] = embed_dim
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False), nn.ReLU(inplace=True)]
            if patch_size > 1:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: the bf16 max-pools and convolutions made the cpu_hour step 1.3x faster on a Xeon
        # (docs/performance.md); the tokens then come out of flatten and transpose without a copy.
        return super().forward(x.contiguous(memory_format=torch.channels_last))


TOKENIZERS = {"patch": PatchEmbed, "conv": ConvTokenizer}
# The values each argument of VisionTransformer takes, checked by config.schema before any work.
RULES = {
    **dict.fromkeys(
        ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"), POSITIVE_INT
    ),
    "mlp_ratio": Number(low=0, low_open=True),
    "qkv_bias": Flag(),
    **dict.fromkeys(("drop_rate", "attn_drop_rate", "drop_path_rate"), OPEN_PROBABILITY),
    "tokenizer": Choice(tuple(TOKENIZERS)),
    "pool": Choice(("cls", "mean")),
}


class Attention(nn.Module):
    """Multi-head self-attention: fused SDPA for training, an explicit path that can return the weights."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        # On CPU, SDPA's bf16 backward (its flash kernel) took 3.5x the explicit path's time at 65 tokens, 44% of
        # the cpu_hour step (docs/performance.md); in float32, and without gradients, SDPA is as fast or faster.
        cpu_bf16_backward = x.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
        if return_attn or cpu_bf16_backward:
            attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
            x = self.attn_drop(attn) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, heads * head_dim)
        return self.proj_drop(self.proj(x)), attn if return_attn else None


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        # stochastic depth: a residual branch dropped per sample, the kept ones scaled by 1 / keep probability
        self.drop_path1 = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attn=return_attn)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, attn


class VisionTransformer(nn.Module):
    """ViT classifier from the CLS token. ``drop_rate`` drops inside the MLP and on each residual branch's
    output; ``drop_path_rate`` is the last block's stochastic depth, rising linearly from 0 in the first;
    ``tokenizer`` is ``patch`` (the seed's) or ``conv`` (:class:`ConvTokenizer`)."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        tokenizer: str = "patch",
        pool: str = "cls",
    ) -> None:
        super().__init__()
        # What the arithmetic below needs of the arguments (their own ranges are the schema's, models.vit.RULES):
        # heads split the width, patches tile the image, each conv stage halves the grid.
        if embed_dim % num_heads:
            raise ValueError(
                f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}: "
                "choose heads that divide the width (e.g. 192 with 3, 4, 6 or 12 heads)"
            )
        if img_size % patch_size:
            raise ValueError(
                f"model.patch_size={patch_size} does not divide model.img_size={img_size}: "
                "choose a patch size that divides the image (e.g. 2, 4 or 8 for 32x32)"
            )
        if tokenizer == "conv" and patch_size & (patch_size - 1):
            raise ValueError(
                f"model.patch_size={patch_size} with model.tokenizer=conv must be a power of two "
                "(each conv stage halves the grid): e.g. 2, 4 or 8"
            )
        self.num_classes, self.pool = num_classes, pool
        self.patch_embed = TOKENIZERS[tokenizer](img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))  # CLS too
        # The linear rule; numbers, not weights: on the CPU even when the network is built on the meta device
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters that are not weights of a layer and so take no weight decay."""
        return {"cls_token", "pos_embed"}

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, D)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        # cls: the seed's CLS token. mean: the average of the patch tokens (CCT's and the GAP ViTs' pooling);
        # the CLS token still attends, so attention maps and rollout read the same.
        return self.head(self.norm(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._tokens(x)
        for block in self.blocks:
            x, _ = block(x)
        return self._classify(x)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each block's attention weights, (B, heads, N + 1, N + 1), through the explicit path."""
        x = self._tokens(x)
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attn=True)
            attentions.append(attn)
        return self._classify(x), attentions


def _init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal weights and zero biases (LayerNorm keeps PyTorch's ones and zeros)."""
    if isinstance(module, nn.Conv2d) and module.bias is None:  # the conv tokenizer: followed by ReLU
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
