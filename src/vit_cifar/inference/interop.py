"""Our ViT in timm's terms: the one place that says which ``timm.create_model`` arguments build the same network
and how our weights map onto it.

timm's ``VisionTransformer`` can hold our ``VisionTransformer`` exactly when its tokens come from the patch
embedding (``tokenizer=patch``): every parameter has the same name and shape in both (patch embedding with its
LayerNorm, CLS token, position embedding, blocks, final norm, head), so the mapping is the identity and
:func:`timm_state_dict` only checks it. The one difference timm's JSON-able arguments cannot express is the
LayerNorm epsilon: 1e-6 in timm, 1e-5 here (PyTorch's default). :func:`exact_norm_args` are the two Python
arguments that state ours (``norm_layer`` and ``embed_norm_layer``); with them timm's network gives our outputs to
float32 rounding, without them its probabilities differ by up to about 1e-4 (more where activations are small).
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn

from vit_cifar.errors import ConfigError

# timm's registered ViT-Tiny (width 192, depth 12, 3 heads); every shape argument below overrides its own.
TIMM_ARCH = "vit_tiny_patch16_224"
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by every LayerNorm of our ViT
# Our argument -> timm's. Dropout: ours acts inside the MLP and on each residual branch, as timm's proj_drop.
_SAME = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio")
_RENAMED = {
    "qkv_bias": "qkv_bias",
    "drop_rate": "proj_drop_rate",
    "attn_drop_rate": "attn_drop_rate",
    "drop_path_rate": "drop_path_rate",
}


def _vit_arguments(net_config: dict) -> dict:
    """The network's arguments, with the constructor's defaults for those the config leaves out."""
    from vit_cifar.models import VisionTransformer

    defaults = {
        name: p.default
        for name, p in inspect.signature(VisionTransformer).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **{k: v for k, v in net_config.items() if not k.startswith("_")}}


def timm_model_args(net_config: dict) -> dict:
    """Keyword arguments of ``timm.create_model(TIMM_ARCH, **args)`` for the network ``net_config`` describes
    (``_target_`` and its arguments, as in a checkpoint); a :class:`ConfigError` naming why when timm's
    ``VisionTransformer`` cannot hold it."""
    target = str(net_config.get("_target_", "?"))
    name = target.rsplit(".", 1)[-1]
    if not target.startswith("vit_cifar.models") or name != "VisionTransformer":
        raise ConfigError(
            f"format=timm holds our VisionTransformer only, and this checkpoint is a {name}: "
            "export it with format=onnx or format=safetensors"
        )
    args = _vit_arguments(net_config)
    tokenizer = args.pop("tokenizer", "patch")
    if tokenizer != "patch":
        raise ConfigError(
            f"format=timm cannot hold a ViT with model.tokenizer={tokenizer}: timm's VisionTransformer has a "
            "patch embedding only; export it with format=onnx or format=safetensors"
        )
    known = {*_SAME, *_RENAMED}
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        raise ConfigError(
            f"format=timm has no equivalent of model.{unknown[0]}={args[unknown[0]]}: "
            "export it with format=onnx or format=safetensors"
        )
    result = {k: args[k] for k in _SAME}
    result |= {theirs: args[ours] for ours, theirs in _RENAMED.items()}
    result["embed_norm_layer"] = "layernorm"  # ours ends its patch embedding in a LayerNorm
    return result


def exact_norm_args() -> dict:
    """The ``timm.create_model`` arguments that give its LayerNorms our epsilon (JSON cannot hold them)."""
    norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
    return {"norm_layer": norm, "embed_norm_layer": norm}


def build_timm_vit(net_config: dict, exact: bool = True) -> nn.Module:
    """timm's ``VisionTransformer`` of the shape ``net_config`` describes (randomly initialised). ``exact``:
    with our LayerNorm epsilon, so that our weights give the same outputs to float32 rounding."""
    import timm

    args = timm_model_args(net_config) | (exact_norm_args() if exact else {})
    return timm.create_model(TIMM_ARCH, pretrained=False, **args)


def timm_state_dict(net: nn.Module, timm_net: nn.Module) -> dict[str, torch.Tensor]:
    """Our ViT's weights under timm's names (the same names: this checks that they fit ``timm_net``)."""
    from vit_cifar.checkpoints.loading import describe_mismatch

    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    mismatch = describe_mismatch(timm_net, state)
    if mismatch:
        raise ConfigError(f"this timm's VisionTransformer does not fit our ViT's weights: {mismatch}")
    return state


def to_timm(net: nn.Module, net_config: dict, exact: bool = True) -> nn.Module:
    """timm's ``VisionTransformer`` holding ``net``'s weights, in eval mode."""
    theirs = build_timm_vit(net_config, exact=exact)
    theirs.load_state_dict(timm_state_dict(net, theirs))
    return theirs.eval()
