"""Evaluate a checkpoint: ``python -m vit_cifar.evaluate ckpt_path=<file> ...`` (configs/eval.yaml)."""

from omegaconf import DictConfig

from vit_cifar.analysis.evaluation import evaluate
from vit_cifar.config.entry import hydra_main, run_cli


@hydra_main("eval")
def main(cfg: DictConfig) -> float:
    return run_cli(evaluate, cfg)["test_acc"]


if __name__ == "__main__":
    main()
