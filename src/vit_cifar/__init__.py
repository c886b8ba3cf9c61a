"""vit-cifar: train, evaluate and explain a Vision Transformer on CIFAR-10."""

__version__ = "0.1.0"
