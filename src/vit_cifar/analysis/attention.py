"""Attention maps and attention rollout, as pure functions on attention tensors, and :func:`explain`, which
runs them over a batch of images through a ViT's explicit attention path.

Shapes: B images, H heads, N tokens (the CLS token first, then the patches in row-major order, as
``PatchEmbed`` flattens them), g the side of the patch grid (N = 1 + g * g).

Rollout follows Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers": per layer, fuse the
heads, add the identity for the residual path, renormalise the rows, and multiply through the layers. The
gradient-weighted variant (toward one class) weights each head's attention by its gradient and keeps the
positive part before fusing, as in Chefer et al. (2021), "Transformer Interpretability Beyond Attention
Visualization".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEAD_FUSIONS = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N): the mean, max or min over the heads."""
    return HEAD_FUSIONS[head_fusion](attn, dim=1)


def discard_lowest(attn: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the weakest ``discard_ratio`` of each row's links to the patches, (B, N, N) -> (B, N, N).

    The link to the CLS token (column 0) is never dropped. Unlike the common implementation, which ranks all
    N * N entries together, this ranks within each row: a token that attends diffusely keeps its strongest
    links instead of losing them all to sharper tokens. Rows no longer sum to 1; rollout renormalises them.
    """
    k = int((attn.shape[-1] - 1) * float(discard_ratio))  # of the N - 1 patch links
    if k == 0:
        return attn
    patches = attn[..., 1:]  # (B, N, N - 1)
    weakest = patches.topk(k, dim=-1, largest=False).indices  # (B, N, k)
    return torch.cat([attn[..., :1], patches.scatter(-1, weakest, 0.0)], dim=-1)


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    gradients: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention rollout through the given layers (first to last), each (B, H, N, N) -> (B, N, N).

    Row i of the result is how much token i's final representation draws on each input token; every row
    sums to 1. With ``gradients`` (one per layer, the gradient of a class score with respect to each
    attention), each head's attention is first replaced by the positive part of attention * gradient.
    """
    batch, _, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)
    rollout = eye.expand(batch, n, n)
    for i, attn in enumerate(attentions):
        if gradients is not None:
            attn = (attn * gradients[i]).clamp(min=0)  # (B, H, N, N): where attention raised the class score
        a = discard_lowest(fuse_heads(attn, head_fusion), discard_ratio) + eye  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)  # rows back to distributions
        rollout = a @ rollout  # this layer mixes what the earlier layers had mixed
    return rollout


def cls_patch_maps(attn: torch.Tensor, grid_size: int) -> torch.Tensor:
    """The CLS token's row over the patches as a grid: (..., N, N) -> (..., g, g), N = 1 + g * g; per-head
    attention (B, H, N, N) and a rollout (B, N, N) alike."""
    return attn[..., 0, 1:].reshape(*attn.shape[:-2], grid_size, grid_size)  # row-major, as PatchEmbed


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of patch-grid maps to image size: (..., g, g) -> (..., size, size)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])  # (M, 1, g, g), as interpolate wants
    up = F.interpolate(flat.float(), size=(size, size), mode="bilinear", align_corners=False)
    return up.reshape(*lead, size, size)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map (the last two dimensions) stretched to [0, 1]; a flat map becomes all zeros."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny)


# ------------------------------------------------------------------------ the attention of images

BATCH = 64  # images explained per forward pass: attention maps are (B, heads, N, N) per layer


@dataclass
class Explanation:
    """Of K images: predictions and their probabilities (K,), head maps per chosen layer (K, H, S, S), the
    rollout (K, S, S) and, toward ``grad_targets`` (K,), the gradient-weighted rollout; maps in [0, 1]."""

    preds: torch.Tensor
    probs: torch.Tensor
    head_maps: dict[int, torch.Tensor]
    rollout: torch.Tensor
    grad_rollout: torch.Tensor | None
    grad_targets: torch.Tensor | None


def explain(
    net: torch.nn.Module,
    x: torch.Tensor,
    layers: list[int],
    head_fusion: str,
    discard_ratio: float,
    grad_class: int | str | None,
) -> Explanation:
    """Attention of normalised images ``x`` (K, 3, S, S), ``BATCH`` at a time, through the explicit path
    (``forward_with_attention``)."""
    grid = net.patch_embed.grid_size
    to_image = lambda maps: scale_to_unit(upsample_maps(cls_patch_maps(maps, grid), x.shape[-1])).cpu()
    preds, probs, rollouts, grad_rollouts, targets = [], [], [], [], []
    head_maps: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for chunk in x.split(BATCH):
        # The gradient-weighted rollout needs the graph; the plain one only reads the attention.
        with torch.set_grad_enabled(grad_class is not None):
            logits, attentions = net.forward_with_attention(chunk)  # attentions: depth x (B, H, N, N)
        p, pred = logits.detach().softmax(dim=-1).max(dim=-1)
        preds.append(pred)
        probs.append(p)
        for i in layers:
            head_maps[i].append(to_image(attentions[i].detach()))  # (B, H, S, S)
        plain = [a.detach() for a in attentions]
        rollouts.append(to_image(attention_rollout(plain, head_fusion, discard_ratio)))  # (B, S, S)
        if grad_class is not None:
            target = pred if grad_class == "predicted" else torch.full_like(pred, grad_class)
            score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for all
            gradients = torch.autograd.grad(score, attentions)
            grad_rollouts.append(to_image(attention_rollout(plain, head_fusion, discard_ratio, gradients)))
            targets.append(target)
    return Explanation(
        torch.cat(preds),
        torch.cat(probs),
        {i: torch.cat(maps) for i, maps in head_maps.items()},
        torch.cat(rollouts),
        torch.cat(grad_rollouts) if grad_rollouts else None,
        torch.cat(targets) if targets else None,
    )
