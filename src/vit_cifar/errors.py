"""Errors that stop a command with one clear line instead of a traceback."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), for one-line
    errors that quote a library's own message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def one_line(err: BaseException | str) -> str:
    """All of a message's non-empty lines joined into one (a library's multi-line message, in one error line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or "(no message)"


class VitCifarError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it, on one line (a library's
    message quoted in it may span several)."""

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
