"""Train, test and write metrics.json into the run folder: ``python -m vit_cifar.train [key=value ...]``."""

from omegaconf import DictConfig

from vit_cifar.config.entry import hydra_main, run_cli
from vit_cifar.sweeps.summary import validation_accuracy
from vit_cifar.training.run import check_train_command, train_in_locked_folder


@hydra_main("train", check=check_train_command)
def main(cfg: DictConfig) -> float | None:
    metrics = run_cli(train_in_locked_folder, cfg)
    return validation_accuracy(metrics)  # what a Hydra sweeper maximises: never the test accuracy


if __name__ == "__main__":
    main()
