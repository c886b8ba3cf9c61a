"""Summarise a finished (or running) sweep: ``python -m vit_cifar.sweep_summary <multirun folder>`` writes
summary.csv, summary.md, summary.png (and summary_seeds.csv) into it, as a ``-m`` sweep does when it ends."""

import argparse
import sys
from pathlib import Path

from vit_cifar.config.entry import check_output_place
from vit_cifar.errors import VitCifarError
from vit_cifar.sweeps.summary import failure_line, report, summarise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vit_cifar.sweep_summary",
        description="Rank a sweep's jobs by validation accuracy; plot accuracy against each swept knob.",
    )
    parser.add_argument("folder", type=Path, help="the sweep's folder: outputs/multirun/<date>/<time>")
    args = parser.parse_args(argv)
    try:
        if args.folder.is_dir():  # the summary is written into it (what is not a folder, summarise names)
            check_output_place(args.folder, "folder", folder=True)
        summary = summarise(args.folder)
    except VitCifarError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    print(report(summary))
    if summary.failed:  # listed in the summary; the summary itself was written, so the exit code is 0
        print(failure_line(summary))


if __name__ == "__main__":
    main()
