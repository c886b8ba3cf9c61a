"""Our ViT in timm's terms: the one place that says which ``timm.create_model`` arguments build the same network,
how our weights map onto it, and how the ``format=timm`` export states both.

timm's ``VisionTransformer`` can hold our ``VisionTransformer`` exactly when its tokens come from the patch
embedding (``tokenizer=patch``): every parameter has the same name and shape in both (patch embedding with its
LayerNorm, CLS token, position embedding, blocks, final norm, head), so the mapping is the identity and a strict
``load_state_dict`` checks it. The one difference timm's JSON-able arguments cannot express is the LayerNorm
epsilon: 1e-6 in timm, 1e-5 here (PyTorch's default). :func:`exact_norm_args` are the two Python arguments that
state ours (``norm_layer`` and ``embed_norm_layer``); with them timm's network gives our outputs to float32
rounding, without them its probabilities differ by up to about 1e-4 (more where activations are small).
"""

from __future__ import annotations

import inspect
from functools import partial

from torch import nn

from vit_cifar.errors import ConfigError

# timm's registered ViT-Tiny (width 192, depth 12, 3 heads); every shape argument below overrides its own.
TIMM_ARCH = "vit_tiny_patch16_224"
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by every LayerNorm of our ViT


def timm_model_args(net_config: dict) -> dict:
    """Keyword arguments of ``timm.create_model(TIMM_ARCH, **args)`` for the network ``net_config`` describes
    (``_target_`` and its arguments, as in a checkpoint); a one-line ConfigError when timm cannot hold it."""
    from vit_cifar.models import VisionTransformer

    target = str(net_config.get("_target_", "?"))
    name = target.rsplit(".", 1)[-1]
    if not target.startswith("vit_cifar.models") or name != "VisionTransformer":
        raise ConfigError(
            f"format=timm holds our VisionTransformer only, and this checkpoint is a {name}: "
            "export it with format=onnx or format=safetensors"
        )
    # Every argument, the constructor's defaults for those the config leaves out: timm takes each under the
    # same name but our dropout, which acts inside the MLP and on each residual branch, as timm's proj_drop.
    args = {arg: p.default for arg, p in inspect.signature(VisionTransformer).parameters.items()}
    args |= {k: v for k, v in net_config.items() if not k.startswith("_")}
    tokenizer, pool = args.pop("tokenizer"), args.pop("pool")
    if tokenizer != "patch" or pool != "cls":
        raise ConfigError(
            f"format=timm cannot hold a ViT with model.tokenizer={tokenizer} model.pool={pool}: ours is held by "
            "timm's as tokenizer=patch pool=cls only; export it with format=onnx or format=safetensors"
        )
    args["proj_drop_rate"] = args.pop("drop_rate")
    return args | {"embed_norm_layer": "layernorm"}  # ours ends its patch embedding in a LayerNorm


def exact_norm_args() -> dict:
    """The ``timm.create_model`` arguments that give its LayerNorms our epsilon (JSON cannot hold them)."""
    norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
    return {"norm_layer": norm, "embed_norm_layer": norm}


def timm_network(model_args: dict, state: dict) -> nn.Module:
    """timm's ``VisionTransformer`` as a timm user builds it from the export's ``config.json`` (``model_args``,
    with our LayerNorm epsilon), holding ``state``: a strict ``load_state_dict`` checks every name and shape."""
    import timm

    theirs = timm.create_model(TIMM_ARCH, pretrained=False, **(model_args | exact_norm_args()))
    theirs.load_state_dict(state)
    return theirs.eval()


def to_timm(net: nn.Module, net_config: dict) -> nn.Module:
    """timm's ``VisionTransformer`` holding ``net``'s weights (the same names)."""
    return timm_network(timm_model_args(net_config), net.state_dict())


def timm_config(card: dict) -> dict:
    """timm's ``config.json`` (as timm's own Hub exports write it) for the network a model card describes:
    architecture, model_args, pretrained_cfg, and the card itself under ``vit_cifar``."""
    args = timm_model_args(card["network"])
    size = card["image_size"]
    return {
        "architecture": TIMM_ARCH,
        "num_classes": args.pop("num_classes"),
        "num_features": args["embed_dim"],
        "global_pool": "token",
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": card["mean"],
            "std": card["std"],
            "num_classes": len(card["classes"]),
            "classifier": "head",
            "crop_pct": 1.0,
            "interpolation": "bilinear",
        },
        "label_names": card["classes"],
        "vit_cifar": {
            "note": (
                f"our LayerNorms use eps={LAYER_NORM_EPS} (timm's default: 1e-6), which JSON cannot state: pass "
                f"norm_layer=embed_norm_layer=functools.partial(torch.nn.LayerNorm, eps={LAYER_NORM_EPS}) to "
                "timm.create_model too for the very same outputs (without, probabilities differ by up to ~1e-4)"
            ),
            **card,
        },
    }
