"""Export a checkpoint: ``python -m vit_cifar.export ckpt_path=<file> format=onnx|safetensors|timm``."""

from omegaconf import DictConfig

from vit_cifar.config.entry import hydra_main, run_cli
from vit_cifar.inference.export import export


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    run_cli(export, cfg)


if __name__ == "__main__":
    main()
