"""Benchmarks (python -m vit_cifar.benchmark): never imported by training."""
