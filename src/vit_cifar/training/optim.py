"""Parameter groups for weight decay and the warmup-cosine learning-rate schedule, as pure functions."""

from __future__ import annotations

import math

from torch import nn

# Normalisation layers scale and shift activations; decaying their parameters only fights the normalisation.
_NORM_TYPES = (  # the public norm layers (the lazy ones subclass these)
    *(nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm, nn.SyncBatchNorm),
    *(
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    ),
)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters by role: layer weights decay; biases, norm parameters and the model's
    ``no_weight_decay()`` names (a ViT's ``cls_token`` and ``pos_embed``) do not."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{name}" if module_name else name
            if isinstance(module, _NORM_TYPES) or name == "bias" or full_name in skip:
                no_decay.append(param)
            else:
                decay.append(param)
    # Named, so that the learning-rate monitor logs lr-<optimiser>/decay and /no_decay, not pg1 and pg2.
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warmup reaching ``peak_lr`` at step ``warmup_steps - 1``, then a cosine from ``peak_lr`` at step
    ``warmup_steps`` down to exactly ``min_lr`` at the last step, ``total_steps - 1``.
    """
    if total_steps <= 1:
        return peak_lr
    warmup_steps = min(warmup_steps, total_steps - 1)
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_at(progress: float, warmup_fraction: float, peak_lr: float, min_lr: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of a run whose length is not known in steps (a wall-clock budget).

    Linear warmup from ``min_lr`` to ``peak_lr`` over the first ``warmup_fraction`` of the run, then a cosine down
    to exactly ``min_lr`` at progress 1. Progress past 1 stays at ``min_lr``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return min_lr + (peak_lr - min_lr) * progress / warmup_fraction
    rest = 1.0 - warmup_fraction
    decayed = (progress - warmup_fraction) / rest if rest > 0 else 1.0
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * decayed))


def warmup_steps_for(total_steps: int, max_epochs: int, warmup_epochs: float) -> int:
    """Warmup length in steps: ``warmup_epochs`` of the trainer's real steps per epoch, never past the run."""
    if max_epochs <= 0:
        return 0
    return min(round(total_steps * warmup_epochs / max_epochs), max(total_steps - 1, 0))
