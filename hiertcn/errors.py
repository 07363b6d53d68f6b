"""Exceptions of the `hiertcn` package. Each message names the bad value and the fix."""

from __future__ import annotations


class HierTCNError(Exception):
    """Base class for errors that the command line reports without a traceback."""

    exit_code = 1


class DataError(HierTCNError):
    """An input log is missing, malformed, or empty after filtering."""

    exit_code = 2


class ConfigError(HierTCNError):
    """A configuration value or flag combination is invalid."""

    exit_code = 2


class InvalidFieldError(ConfigError):
    """A configuration field has an invalid value.

    `field` is the field's name, `value` its value and `fix` what to use instead, so that a
    command can name its own flag in place of the field.
    """

    def __init__(self, owner: str, field: str, value: object, fix: str) -> None:
        super().__init__(f"{owner} {field}={value!r} is invalid: {fix}")
        self.field = field
        self.value = value
        self.fix = fix


class CheckpointError(HierTCNError):
    """A checkpoint is missing, unreadable, or was written for another model."""

    exit_code = 2


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file exists but does not read as a hiertcn checkpoint.

    `reason` is the cause without the path and the fix (for example "truncated or damaged"), so
    a caller such as `--resume` can give a fix that suits its own context. `untrusted` marks a
    file that refers to Python objects that no hiertcn checkpoint contains.
    """

    def __init__(self, message: str, reason: str, untrusted: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.untrusted = untrusted


class TrainingDivergedError(HierTCNError):
    """The training loss became NaN or infinite, so the weights are no longer usable.

    The exit code is 1, as for other failed runs: the flags were valid, but the run with them
    diverged.
    """


class OutOfMemoryError(HierTCNError):
    """An allocation failed in training or evaluation. The message names the flags to lower."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a command stops the same way and reports what it saved.

    The command line exits with 128 + 15 on it, the code of a process that SIGTERM ended.
    """
