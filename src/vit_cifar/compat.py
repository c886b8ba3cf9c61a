"""The private parts of libraries this project uses, each behind one adapter that says why (the library has no
public way), so that an upgrade that moves them breaks here, and tests/test_compat.py says so."""

from typing import Any


def hydra_command_line(argv: list[str]) -> Any:
    """Hydra's own parse of a command line (``.overrides``, ``.multirun``, ``.cfg`` ...): the pre-flight must read
    it exactly as ``@hydra.main`` will."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)


def sweep_jobs(overrides: list[Any]) -> list[list[str]]:
    """The override list of each job of a ``-m`` grid sweep (``overrides`` parsed by ``OverridesParser``), in
    the order Hydra's basic sweeper runs them: the pre-flight checks every job before the first starts."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]


def trivial_augment_space() -> dict:
    """torchvision's TrivialAugmentWide table ``{op name: (magnitudes(num_bins, height, width), signed)}``: the
    batched GPU path (``data.gpu_aug``) draws from the very same ops and bins as the per-image path."""
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide._AUGMENTATION_SPACE


def averaged_model(callback: Any) -> Any:
    """The ``AveragedModel`` that Lightning's ``WeightAveraging`` callback (``EMAWeightAveraging``) keeps, or None
    before fitting: ``training.callbacks.EMA`` updates it in one foreach call with no host wait (the parent's
    ``AveragedModel.update_parameters`` reads its step count on the host twice a step), and Lightning has no
    public accessor for it."""
    return callback._average_model
