"""The CIFAR ResNet-18 baseline: torchvision's ResNet-18 (11,173,962 parameters for 10 classes) with a 3x3
stride-1 stem and no max-pool. ImageNet's stem (a 7x7 stride-2 conv, then a stride-2 max-pool) would shrink a 32x32
image to 8x8 before the first block; this one keeps 32 -> 32 -> 16 -> 8 -> 4 through the four stages."""

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from vit_cifar.errors import POSITIVE_INT

RULES = {"num_classes": POSITIVE_INT, "in_chans": POSITIVE_INT}  # checked by config.schema, before any work


class ResNet18(ResNet):
    """ResNet-18 for 32x32 images."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)  # (B, 64, H, W)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
        self.maxpool = nn.Identity()
