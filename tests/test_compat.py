"""The adapters over libraries' private parts (vit_cifar.compat) still do what the project needs from them
with the installed versions: a library upgrade that moves one fails here, by name."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from vit_cifar.compat import hydra_command_line, sweep_jobs, trivial_augment_space


def test_hydra_command_line_reads_what_hydra_main_reads():
    args = hydra_command_line(["-m", "optim.lr=1e-3,5e-4", "aug=light"])
    assert args.multirun and args.overrides == ["optim.lr=1e-3,5e-4", "aug=light"]
    assert hydra_command_line(["--cfg", "job"]).cfg == "job"
    assert not hydra_command_line(["seed=1"]).multirun


def test_sweep_jobs_are_every_combination_in_hydras_order():
    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y", "c=3"])
    assert sweep_jobs(parsed) == [
        ["a=1", "b=x", "c=3"],
        ["a=1", "b=y", "c=3"],
        ["a=2", "b=x", "c=3"],
        ["a=2", "b=y", "c=3"],
    ]


def test_trivial_augment_space_gives_ops_with_magnitude_bins():
    space = trivial_augment_space()
    assert {"Identity", "ShearX", "Rotate", "Brightness", "Posterize", "Solarize", "Equalize"} <= set(space)
    magnitudes, signed = space["Rotate"]
    assert signed is True and magnitudes(31, 32, 32).shape == (31,)
    assert float(magnitudes(31, 32, 32)[-1]) == 135.0  # the "wide" space
