"""The GPU data path: training augmentation of a whole batch at once, where it lies, each image drawing its own
TrivialAugmentWide op (torchvision's op set and magnitude bins), crop, flip and RandomErasing; torchvision's v2
transforms draw one set of parameters per call, the same for a whole batch. MixUp/CutMix stay torchvision's.
Nothing here copies from the host to the device once running: on CUDA such a copy waits for the stream, every
batch, so constant tensors are built once per device and cached."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from torchvision.transforms.v2 import functional as TF

from vit_cifar.compat import trivial_augment_space
from vit_cifar.data.samplers import augmentation_seeds
from vit_cifar.data.transforms import batch_mix

NUM_BINS = 31  # torchvision's TrivialAugmentWide default
# torchvision's table {op name: (magnitudes(num_bins, height, width), signed)} is the one source of the op set
# and of the magnitude bins, so the two paths cannot drift apart.
AUGMENTATION_SPACE = trivial_augment_space()
OPS: tuple[str, ...] = tuple(AUGMENTATION_SPACE)
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
ERASING_SCALE, ERASING_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision's RandomErasing defaults
ERASING_TRIES = 10  # as torchvision: an image whose 10 draws all fail is left as it is
BATCHED_POLICIES = ("trivialaugment", "none")  # the aug.policy values this module has a batched version of
# Devices where every op is computed for the whole batch and selected per image (see _where_op).
MASKED_DEVICES = ("cuda",)


@lru_cache
def magnitude_table(num_bins: int, height: int, width: int, device: torch.device | str = "cpu"):
    """torchvision's magnitudes as a (len(OPS), num_bins) float table (0 for ops without one), and which ops
    are signed, (len(OPS),) bool. Cached: build once per device, never modify."""
    magnitudes = [fn(num_bins, height, width) for fn, _ in AUGMENTATION_SPACE.values()]
    table = torch.stack([torch.zeros(num_bins) if m is None else m.to(torch.float32) for m in magnitudes])
    signed = torch.tensor([is_signed for _, is_signed in AUGMENTATION_SPACE.values()])
    return table.to(device), signed.to(device)


def sample_trivial_augment(n: int, height: int, width: int, device="cpu", generator=None):
    """Per image, as torchvision draws once per call: an op (n,) uniform over OPS, and a magnitude (n,) from a
    uniform bin, negative with probability 1/2 for signed ops."""
    table, signed = magnitude_table(NUM_BINS, height, width, device)
    op = torch.randint(len(OPS), (n,), device=device, generator=generator)
    bin_ = torch.randint(NUM_BINS, (n,), device=device, generator=generator)
    negative = signed[op] & (torch.rand(n, device=device, generator=generator) <= 0.5)
    magnitude = table[op, bin_]
    return op, torch.where(negative, -magnitude, magnitude)


def apply_trivial_augment(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Apply operation ``OPS[op[i]]`` with ``magnitude[i]`` to image i of a uint8 (B, C, H, W) batch, as
    torchvision's TrivialAugmentWide does to one image (nearest interpolation, fill 0)."""
    geometric = torch.stack([op == OPS.index(name) for name in GEOMETRIC_OPS]).any(dim=0)
    out = _where_op(images.clone(), geometric, lambda x, i: _affine(x, op[i], magnitude[i]))
    for name, fn in _COLOUR_OPS.items():
        out = _where_op(out, op == OPS.index(name), lambda x, i, fn=fn: fn(x, magnitude[i]))
    return out


def _where_op(x: torch.Tensor, chosen: torch.Tensor, fn: Callable) -> torch.Tensor:
    """``fn(images, index)`` on the chosen images of ``x``, the others unchanged. CUDA: computed for every
    image, then selected, so that nothing waits for the GPU (a count would). CPU: computed on the chosen images
    only (``x`` written in place), since there computing is what costs."""
    if x.device.type in MASKED_DEVICES:
        everything = torch.arange(len(x), device=x.device)
        return torch.where(chosen[:, None, None, None], fn(x, everything), x)
    index = chosen.nonzero().squeeze(1)
    if len(index):
        x[index] = fn(x[index], index)
    return x


def _affine(images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """The geometric ops, each image with its own inverse affine matrix, in one ``grid_sample``: torchvision's
    ``affine``/``rotate``'s matrices, grid and sampling on tensors (shears about the top-left corner with angle
    atan(magnitude), translations by whole pixels, rotations about the centre)."""
    n, _, h, w = images.shape
    m = magnitude.to(torch.float64)
    zero = torch.zeros_like(m)

    def when(name: str, value: torch.Tensor) -> torch.Tensor:
        return torch.where(op == OPS.index(name), value, zero)

    shear_x, shear_y = when("ShearX", torch.atan(m)), when("ShearY", torch.atan(m))
    tx, ty = when("TranslateX", torch.trunc(m)), when("TranslateY", torch.trunc(m))
    angle = when("Rotate", -torch.deg2rad(torch.remainder(m, 360.0)))  # rotate() passes -angle, in [0, 360)
    is_shear = (op == OPS.index("ShearX")) | (op == OPS.index("ShearY"))
    cx = torch.where(is_shear, zero - w * 0.5, zero)  # centre=[0, 0] in pixels, relative to the image centre
    cy = torch.where(is_shear, zero - h * 0.5, zero)

    # torchvision's inverse of T * C * Rotate * ShearY * ShearX * C^-1 (scale 1), per image.
    a = torch.cos(angle - shear_y) / torch.cos(shear_y)
    b = -(a * torch.tan(shear_x) + torch.sin(angle))
    c = torch.sin(angle - shear_y) / torch.cos(shear_y)
    d = torch.cos(angle) - c * torch.tan(shear_x)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    # theta maps output pixel centres to input pixels, both relative to the image centre: in affine_grid's
    # units, where the image spans [-1, 1], the translations and the cross terms scale with the image's sides.
    theta = torch.stack([m0, m1 * h / w, m2 * 2 / w, m3 * w / h, m4, m5 * 2 / h], dim=1).view(n, 2, 3)
    grid = F.affine_grid(theta.to(torch.float32), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _factor(magnitude: torch.Tensor) -> torch.Tensor:
    """1 + magnitude per image, (n, 1, 1, 1), rounded to float32 as torchvision's scalar factor is."""
    return (1.0 + magnitude.to(torch.float64)).to(torch.float32).view(-1, 1, 1, 1)


def _blend(image: torch.Tensor, other: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``, one ratio per image: ratio * image + (1 - ratio) * other, clamped, uint8."""
    ratio = _factor(magnitude)
    # torchvision fuses the multiply-add differently: a level may differ by 1 on a few pixels in a thousand
    return (image.float() * ratio + other * (1.0 - ratio)).clamp_(0, 255).to(torch.uint8)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with the 3x3-smoothed image, borders kept, in torchvision's ``adjust_sharpness``'s own order of
    operations (``_blend``'s differs by a level on 1% of the pixels)."""
    kernel = torch.full((3, 3), 1.0 / 13.0, device=x.device)
    kernel[1, 1] = 5.0 / 13.0
    out = x.float()
    smooth = F.conv2d(out, kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1]).round_()  # (n, C, H-2, W-2)
    inner = out[..., 1:-1, 1:-1]
    inner.add_((smooth - inner) * (1.0 - _factor(m)))
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bits = m.to(torch.int64)
    keep = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8)  # the top `bits` bits of each level
    return x & keep.view(-1, 1, 1, 1)


def _solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    threshold = (255.0 * m.to(torch.float64)).to(torch.float32).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 255 - x, x)


# Each takes uint8 images (n, C, H, W) and their magnitudes (n,). Greyscale is floored to whole levels, as
# torchvision's. AutoContrast and Equalize are torchvision's own: they take batches and work per image.
_COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": lambda x, m: (x.float() * _factor(m)).clamp_(0, 255).to(torch.uint8),
    "Color": lambda x, m: _blend(x, TF.rgb_to_grayscale(x).float(), m),
    "Contrast": lambda x, m: _blend(x, TF.rgb_to_grayscale(x).float().mean((-3, -2, -1), keepdim=True), m),
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, m: TF.autocontrast(x),
    "Equalize": lambda x, m: TF.equalize(x),
}
if set(OPS) != {"Identity", *GEOMETRIC_OPS, *_COLOUR_OPS}:  # a torchvision that changed its op set
    raise ImportError(f"torchvision's TrivialAugmentWide ops {OPS} differ from those implemented here")


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random (H, W) crop of each image reflect-padded by ``padding``, each with its own offset."""
    n, _, h, w = images.shape
    dy = torch.randint(2 * padding + 1, (n, 1), device=images.device, generator=generator)
    dx = torch.randint(2 * padding + 1, (n, 1), device=images.device, generator=generator)
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    rows = torch.arange(h, device=images.device) + dy  # (n, H): the padded row of each output row
    cols = torch.arange(w, device=images.device) + dx  # (n, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    picked = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (n, H, W, C): advanced indices go first
    return picked.permute(0, 3, 1, 2)  # (n, C, H, W)


def random_erasing(images: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """torchvision's RandomErasing drawn per image: with probability ``p``, a rectangle of area fraction in
    ``ERASING_SCALE`` and aspect ratio in ``ERASING_RATIO`` (log-uniform), at a uniform place, is set to 0."""
    n, _, h, w = images.shape
    dev = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, ERASING_TRIES, device=dev, generator=generator) * (high - low) + low

    area = h * w * uniform(*ERASING_SCALE)  # (n, tries)
    aspect = torch.exp(uniform(math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])))
    eh = torch.sqrt(area * aspect).round().long()
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first draw that fits, as torchvision's retry loop
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)  # (n,)
    top = (torch.rand(n, device=dev, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, device=dev, generator=generator) * (w - ew + 1)).long()
    erase = fits.any(dim=1) & (torch.rand(n, device=dev, generator=generator) < p)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None]) & erase[:, None]  # (n, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (n, W)
    return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)  # mask (n, 1, H, W)


class DeviceAugment:
    """The ``aug`` recipe on a uint8 (B, 3, H, W) batch where it lies, in the order and with the distributions
    of ``transforms.train_transform`` then ``transforms.batch_mix``: crop, flip and TrivialAugmentWide on uint8,
    scaling and normalisation, RandomErasing (filling 0, the mean), MixUp/CutMix. ``aug.policy`` is one of
    :data:`BATCHED_POLICIES` (config.schema refuses the others before any work)."""

    def __init__(self, aug: dict, mean: Sequence[float], std: Sequence[float], num_classes: int) -> None:
        self.aug, self.mean, self.std = aug, tuple(mean), tuple(std)
        self.mix = batch_mix(aug, num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """The augmented batch; the per-image draws come from ``generator`` (on the batch's device; None: torch's
        default generator). MixUp/CutMix draw their one value per batch from torch's default generator."""
        aug, g = self.aug, generator
        if aug.get("random_crop_padding"):
            images = random_crop(images, aug["random_crop_padding"], generator=g)
        if aug.get("hflip_p"):
            flip = torch.rand(len(images), device=images.device, generator=g) < aug["hflip_p"]
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if aug.get("policy") == "trivialaugment":
            op, magnitude = sample_trivial_augment(len(images), *images.shape[-2:], images.device, g)
            images = apply_trivial_augment(images, op, magnitude)
        mean, std = _normalisation(self.mean, self.std, images.device)
        x = (images.float() / 255.0 - mean) / std
        if aug.get("erasing_p"):
            x = random_erasing(x, aug["erasing_p"], generator=g)
        return self.mix(x, labels) if self.mix is not None else (x, labels)


@lru_cache
def _normalisation(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(values, device=device).view(1, -1, 1, 1) for values in (mean, std))


class DeviceBatches:
    """Shuffled training batches sliced from uint8 tensors held on the accelerator: no workers, no collation.
    The order is ``sampler``'s, a :class:`DistributedSampler` of ``seed`` and the epoch, whose epoch Lightning
    sets as a DataLoader's. Batches are full-sized (and so MixUp's partner pool) when there is more than one.
    ``generator``, on the images' device, is reseeded at each epoch's start from (seed, epoch, rank) as the
    workers' path seeds an epoch's first item: the augmentation's draws differ between ranks and epochs, and a
    run (or one resumed at an epoch's start) draws them again from ``seed``."""

    def __init__(self, images, labels, batch_size: int, seed=0, rank=0, world_size=1) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        # drop_last=True: every rank takes len // world_size images, so all ranks run as many steps
        self.sampler = DistributedSampler(range(len(labels)), world_size, rank, seed=seed, drop_last=True)
        self.generator = torch.Generator(device=images.device)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if n > self.batch_size else 1

    def __iter__(self):
        s = self.sampler
        self.generator.manual_seed(augmentation_seeds(s.seed, s.epoch, s.rank, 1)[0])
        order = torch.tensor(list(s), device=self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images.index_select(0, index), self.labels.index_select(0, index)
