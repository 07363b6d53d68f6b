"""Timestamp units of the log readers: the unit errors and the fixes that messages suggest.

A log is read in seconds or milliseconds (`formats.TIME_UNITS`). `effective_time_unit` returns
the unit of a format when none is set, and `fixed_unit` rejects a unit that a format with a
fixed unit cannot read.
The `*_fix` functions return the advice at the end of the errors and warnings about timestamps.
"""

from __future__ import annotations

import math
from pathlib import Path

from hiertcn.data.formats import FLEXIBLE_UNIT_FORMATS, ReaderConfig, csv_flags_for_layout
from hiertcn.errors import DataError


class SecondsAsMillisecondsError(DataError):
    """Every timestamp of a log read in milliseconds is before 1973, so the log is in seconds."""


class MillisecondsAsSecondsError(DataError):
    """A timestamp of a log read in seconds is after the year 9999, so the log is in milliseconds.

    `line` and `timestamp` name the first such value, for callers that give their own advice.
    """

    def __init__(self, message: str, line: int, timestamp: int) -> None:
        super().__init__(message)
        self.line = line
        self.timestamp = timestamp


def effective_time_unit(log_format: str, time_unit: str | None) -> str:
    """Return the unit in which the reader of `log_format` reads timestamps.

    An unset unit is the format's own, as `ReaderConfig.time_unit` documents: milliseconds for
    OTTO, seconds for every other format.
    """
    if time_unit is not None:
        return time_unit
    return "ms" if log_format == "otto" else "s"


def fixed_unit(config: ReaderConfig, unit: str, log_format: str, path: Path) -> str:
    """Return `unit`, the fixed unit of `log_format`. Raise DataError when --time-unit differs."""
    if config.time_unit is None or config.time_unit == unit:
        return unit
    mismatch = f"the {log_format} format stores timestamps in {unit}, but --time-unit "
    if unit == "s":
        raise DataError(
            f"{mismatch}ms was given: for a log in milliseconds, "
            f"{milliseconds_fix(config, path)}. For seconds, drop --time-unit"
        )
    raise DataError(f"{mismatch}{config.time_unit} was given: drop --time-unit")


def milliseconds_fix(config: ReaderConfig, path: Path) -> str:
    """Return how to read a log with millisecond timestamps in place of `config.format`."""
    log_format = config.format
    if log_format in FLEXIBLE_UNIT_FORMATS:
        return "pass --time-unit ms"
    flags = csv_flags_for_layout(config, path)
    if flags is None:
        return f"convert the timestamps to seconds, because the {log_format} format reads seconds"
    return (
        f"read it with --format csv {flags} --time-unit ms, because the {log_format} "
        "format reads seconds"
    )


def timestamp_fix(value: object, unit: str, log_format: str) -> str:
    """Return what to do about a timestamp `value` that is not an integer."""
    name = {"s": "seconds", "ms": "milliseconds"}[unit]
    if isinstance(value, str) and is_finite_number(value) and "_" in value:
        return (
            "timestamps must contain only the ASCII digits 0-9 after an optional sign, so "
            "remove the underscores in the file"
        )
    if isinstance(value, str) and is_finite_number(value) and not value.isascii():
        return (
            "timestamps must contain only the ASCII digits 0-9 after an optional sign, so "
            "write the digits as ASCII digits in the file"
        )
    if is_finite_number(value):
        if unit == "s" and log_format in FLEXIBLE_UNIT_FORMATS:
            return (
                "timestamps must be whole Unix seconds, so round them down in the file. To keep "
                "the order of events within a second, multiply them by 1000, round them and "
                "pass --time-unit ms: the events are then stored in whole seconds, in "
                "millisecond order"
            )
        return f"timestamps must be whole Unix {name}, so round them down in the file"
    fix = f"timestamps must be Unix times in whole {name}, so convert them in the file"
    if log_format in ("csv", "jsonl"):
        fix += ", and check that --time-col names the timestamp column"
    return fix


def negative_time_fix(config: ReaderConfig, unit: str) -> str:
    """Return what to check when a log read with `config` has timestamps before 1970."""
    unit_name = {"s": "seconds", "ms": "milliseconds"}[unit]
    start = (
        "if the times count from a start other than 1970, add that start's Unix time in "
        f"{unit_name} to every timestamp"
    )
    if config.format in ("csv", "jsonl"):
        return (
            f"check that --time-col names the timestamp column and that --time-unit (now {unit}) "
            f"is the unit of the file, and {start}"
        )
    if config.format == "otto":
        return f"check that --time-unit (now {unit}) is the unit of the file, and {start}"
    if config.time_col is not None:
        return (
            f"check that --time-col {config.time_col} names the timestamp column of the "
            f"{config.format} layout, and {start}"
        )
    return f"check that the file has the {config.format} layout, and {start}"


def is_finite_number(value: object) -> bool:
    """Return whether `value` is a finite float or a string that parses as one."""
    if isinstance(value, bool) or not isinstance(value, (float, str)):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False
