"""How fast vit-cifar trains and infers on this machine: ``python -m vit_cifar.benchmark [--inference] ...``
(``vit-cifar-benchmark``). The work is :mod:`vit_cifar.bench.training` and :mod:`vit_cifar.bench.inference`;
``--help`` lists the flags. argparse, not Hydra: it runs where only torch, torchvision and lightning are installed.
"""

from __future__ import annotations

import sys

from vit_cifar.bench.report import run
from vit_cifar.errors import VitCifarError


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
    except VitCifarError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
