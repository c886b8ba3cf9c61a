"""Classify image files: ``python -m vit_cifar.predict ckpt_path=<file> inputs=<file, folder or list>``."""

from omegaconf import DictConfig

from vit_cifar.config.entry import hydra_main, run_cli
from vit_cifar.inference.predict import predict


@hydra_main("predict")
def main(cfg: DictConfig) -> None:
    run_cli(predict, cfg)


if __name__ == "__main__":
    main()
