"""What every ``python -m vit_cifar.<command>`` shares: the config folder, a pre-flight of the command line,
one-line errors and a quiet console."""

import functools
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from vit_cifar.compat import hydra_command_line, sweep_jobs
from vit_cifar.devices import cpu_precision
from vit_cifar.errors import ConfigError, VitCifarError, first_line, one_line
from vit_cifar.sweeps.jobs import in_sweep, run_sweep_job

# configs/ sits at the top of the checkout, beside src/ (the package is installed in editable mode).
CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "configs")
# ${cpu_precision:} in a config: bf16-mixed on a CPU with native bf16, else 32-true (experiment=cpu_hour)
OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)
# Config groups that optional Hydra plugins bring, and the extra of pyproject.toml that installs each.
PLUGIN_EXTRAS = {"hydra/sweeper/optuna": "optuna", "hydra/launcher/submitit_slurm": "slurm"}

# The quiet console: what libraries say about themselves, not about the user's run, is dropped.
NOISY_WARNINGS = (  # Python warnings, by message regex
    # Lightning's pytree helper against a newer torch: a deprecation inside Lightning, printed twice per run
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # the model summary's size estimate under mixed precision: it says so and uses 32 bits
    r"Precision .* is not supported by the model summary",
    # training without a validation split (data.val_size=0) returns no validation loader, on purpose
    r"Total length of `list` across ranks is zero",
)
# Lightning's information lines (by prefix) that advertise its cloud or explain its own defaults.
NOISY_INFO = ("💡 Tip:", "Trainer already configured with model summary callbacks")
# The Trainer's start-up banner: the same for every job of a sweep, so said by the first job only.
DEVICE_BANNER = ("GPU available:", "TPU available:", "HPU available:", "LOCAL_RANK:")
_dropped_info = list(NOISY_INFO)


def run_cli(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run ``job``; a user error ends the process with one line on stderr and the error's exit code. In a
    ``-m`` sweep a failed job is recorded in its folder instead, and the sweep goes on."""
    quiet_library_noise()
    if in_sweep():
        quiet_device_banner(quiet=int(HydraConfig.get().job.num) > 0)
        return run_sweep_job(job, cfg)
    try:
        return job(cfg)
    except (VitCifarError, InstantiationException) as err:
        # Hydra's instantiate wraps what a constructor raises: a ValueError is a constructor refusing the
        # arguments the config gave it (an invariant of its own arithmetic), so a bad value, as a ConfigError.
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
        if isinstance(err, ValueError):
            err = ConfigError(str(err))
        if not isinstance(err, VitCifarError):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def _drop_noise(record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith(tuple(_dropped_info))


def quiet_library_noise() -> None:
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_drop_noise)  # once: a logger does not add a filter it has


def quiet_device_banner(quiet: bool = True) -> None:
    """Drop (or let through again) the Trainer's device banner, which each job of a sweep would print again."""
    _dropped_info[:] = NOISY_INFO + DEVICE_BANNER if quiet else NOISY_INFO


Check = Callable[[DictConfig, bool], None]  # check(composed config with its hydra node, multirun)


def hydra_main(config_name: str, check: Check | None = None) -> Callable:
    """``@hydra.main`` for ``config_name``, preceded by :func:`preflight` of the command line. ``check`` is the
    command's own pre-flight (train's; the other commands check their values in the job, before any writing)."""

    def decorator(task: Callable[[DictConfig], Any]) -> Callable:
        hydra_task = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(task)

        @functools.wraps(task)
        def entry() -> Any:
            preflight(config_name, sys.argv[1:], check)
            return hydra_task()

        return entry

    return decorator


def compose_config(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """The config ``python -m vit_cifar.<command> <overrides>`` runs, for its job in this process (a notebook,
    the tests), with the outputs in ``output_dir``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} resolves outside @hydra.main
    with open_dict(cfg):
        if "paths" in cfg:
            cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def preflight(config_name: str, argv: list[str], check: Check | None = None) -> None:
    """Compose the config of the command line, every job of a ``-m`` sweep included, and ``check`` it before
    Hydra creates a run folder: a bad override ends the process with one line, exit code 2, nothing written.
    (Hydra's own messages span several lines and exit 1.) Commands that only print (``--help``, ``--cfg``) or
    load configs from elsewhere (``-cp``, ``-cd``) go straight to Hydra."""
    args = hydra_command_line(argv)
    only_prints = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    if only_prints or args.experimental_rerun or args.config_path or args.config_dir:
        return
    try:
        jobs = [args.overrides]  # one job, or each combination of a -m sweep's values
        if args.multirun:  # interval sweeps (Optuna & co.) make no grid: their fixed overrides are checked
            parsed = OverridesParser.create().parse_overrides(args.overrides)
            try:
                jobs = sweep_jobs(parsed)
            except hydra.errors.HydraException:
                jobs = [[o.input_line for o in parsed if not o.is_sweep_override()]]
        for overrides in jobs:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose(args.config_name or config_name, overrides=overrides, return_hydra_config=True)
            if check is not None:
                check(cfg, bool(args.multirun))
    except (VitCifarError, hydra.errors.HydraException, OmegaConfBaseException) as err:
        print(f"error: {err if isinstance(err, VitCifarError) else _one_line(err)}", file=sys.stderr)
        sys.exit(ConfigError.exit_code)


def _one_line(err: BaseException) -> str:
    """Hydra's message on one line; an unknown key gets its own wording."""
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = getattr(cause, "full_key", None) or "?"
        hint = f"check its spelling (--cfg job prints every key), or add a new key with +{key}=<value>"
        return f"unknown key {key}: {hint}"
    message = str(err).split("Config search path:")[0]  # Hydra's list of folders says nothing to the user
    parts = [one_line(message)]
    if isinstance(cause, OmegaConfBaseException):
        parts.append(first_line(cause))
    missing = [extra for plugin, extra in PLUGIN_EXTRAS.items() if f"'{plugin}'" in str(err)]
    if missing:  # a config of an optional Hydra plugin that is not installed
        parts.append(f"(install the plugin: pip install -e '.[{missing[0]}]')")
    return " ".join(parts)


def check_output_place(path: str | Path, key: str, folder: bool) -> Path:
    """Before any work: that ``path`` (a folder to write into, or a file) can be made and written, so a command
    never computes its results and then fails to keep them; a ``ConfigError`` naming ``key`` if not."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a folder: give a folder to write into")
    if not folder and path.is_dir():
        raise ConfigError(f"{key}={path} is a folder: give a file name")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} lies under {existing}, which is a file: choose another place")
    try:  # the permission bits do not tell (root, ACLs, a read-only mount): try to create a file there
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        why = f"{err.strerror or type(err).__name__}: {existing}"
        raise ConfigError(f"{key}={path} cannot be written ({why}): choose a writable place") from None
    return path
