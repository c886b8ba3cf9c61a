from vit_cifar.models.vit import VisionTransformer

__all__ = ["VisionTransformer"]
