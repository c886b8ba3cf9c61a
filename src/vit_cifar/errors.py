"""Errors that stop a command with one clear line instead of a traceback, and the rules that say what a config
key takes, which word a bad value as ``<key>=<value> <what is wrong>: use <what is allowed>``."""

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def one_line(err: BaseException | str) -> str:
    """All of a message's non-empty lines joined into one (a library's multi-line message, in one error line)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or "(no message)"


class VitCifarError(Exception):
    """A problem the user can fix: the message says what was wrong and how to fix it, on one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ConfigError(VitCifarError):
    """An impossible or out-of-range configuration value."""

    exit_code = 2


class DataError(VitCifarError):
    """A dataset that is missing, malformed or unreadable."""


class CheckpointError(VitCifarError):
    """A checkpoint that is missing, corrupt or of another model."""


class TrainingError(VitCifarError):
    """Training that cannot go on, e.g. a loss that is no longer a finite number."""


class SkippedInputsError(VitCifarError):
    """Some input files could not be read; the others were processed and their results written."""

    exit_code = 3


@dataclass(frozen=True)
class Number:
    """A finite int or float within bounds; ``integer`` rejects 2.5, ``optional`` also accepts null."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value rather than low <= value
    high_open: bool = False
    integer: bool = False
    optional: bool = False
    hint: str = ""  # what a user may want to know about good values

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "is not set"
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return "has the wrong type"
        if not math.isfinite(value):  # inf passes any open bound; no setting means it
            return "is not finite"
        if self.integer and int(value) != value:
            return "is not an integer"
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return None if above and below else "is out of range"

    def describe(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        if self.high is not None:
            bounds = f" in {left}{show(self.low)}, {show(self.high)}{right}"
        elif self.low is not None:
            bounds = f" {'>' if self.low_open else '>='} {show(self.low)}"
        else:
            bounds = ""
        kind = f"{'null or ' if self.optional else ''}{'an integer' if self.integer else 'a number'}{bounds}"
        return f"{kind} ({self.hint})" if self.hint else kind


@dataclass(frozen=True)
class Numbers:
    """A list of ``length`` numbers, each as ``item`` takes it (``optim.betas``, ``data.mean``)."""

    item: Number
    length: int

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != self.length:
            return "is not a list of the right length"
        return next(filter(None, map(self.item.problem, value)), None)

    def describe(self) -> str:
        return f"a list of {self.length}, each {self.item.describe()}"


@dataclass(frozen=True)
class Choice:
    options: tuple
    optional: bool = False
    hint: str = ""

    def problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        # True == 1 in Python: a flag is only one of flag options, a number only one of number options
        same_kind = [o for o in self.options if isinstance(o, bool) == isinstance(value, bool)]
        return None if value in same_kind else "is unknown"

    def describe(self) -> str:
        options = "one of " + ", ".join(o if isinstance(o, str) else show(o) for o in self.options)
        return f"{options} ({self.hint})" if self.hint else options


@dataclass(frozen=True)
class Hex:
    digits: int

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and re.fullmatch(f"[0-9a-fA-F]{{{self.digits}}}", value)
        return None if value is None or ok else "is not a checksum"

    def describe(self) -> str:
        return f"null or {self.digits} hexadecimal digits"


Flag = functools.partial(Choice, (True, False))  # True == 1 in Python: Choice refuses 1 for a flag

POSITIVE_INT = Number(low=1, integer=True)
COUNT = Number(low=0, integer=True)
PROBABILITY = Number(low=0, high=1)
OPEN_PROBABILITY = Number(low=0, high=1, high_open=True)  # 1 would drop or smooth away everything


def check(key: str, value: Any, rule: Number | Numbers | Choice | Hex) -> None:
    """:class:`ConfigError` naming ``key``, its value and what it takes, when ``value`` breaks ``rule``."""
    problem = rule.problem(value)
    if problem:
        raise ConfigError(f"{key}={show(value)} {problem}: use {rule.describe()}")


def show(value: Any) -> str:
    """A value as it is written in a config: null, true, 'text', 3."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)
