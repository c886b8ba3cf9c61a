from vit_cifar.models.resnet import ResNet18
from vit_cifar.models.vit import VisionTransformer

__all__ = ["ResNet18", "VisionTransformer"]
