"""Attention maps and rollout of a checkpoint: ``python -m vit_cifar.visualize ckpt_path=<file> ...``."""

from omegaconf import DictConfig

from vit_cifar.analysis.explain import visualize
from vit_cifar.config.entry import hydra_main, run_cli


@hydra_main("visualize")
def main(cfg: DictConfig) -> None:
    run_cli(visualize, cfg)


if __name__ == "__main__":
    main()
