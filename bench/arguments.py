"""Argparse types of the bench scripts (bounded integers, seconds and integer lists), and the
default log of the benchmarks that read one.

The scripts import this module as `bench.arguments`, with the repository root on sys.path. The
product's parser types do not cover these bounds, because `hiertcn.command_line.seed` takes 0 to
2**63 - 1 and `stream.config.parse_int` takes any integer.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

# The Taobao head log, relative to the data folder, that the benchmarks read by default.
DEFAULT_DATA = Path("taobao-userbehavior-head") / "UserBehavior_head.csv"


def int_at_least(text: str, low: int) -> int:
    """Parse an integer >= `low`, or raise ArgumentTypeError naming `text`."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: use an integer >= {low}")
    return value


def positive_int(text: str) -> int:
    """Parse a flag value that must be an integer >= 1."""
    return int_at_least(text, 1)


def seconds_at_least(low: float, inclusive: bool) -> Callable[[str], float]:
    """Return a parser of a finite number of seconds >= `low` (> `low` unless `inclusive`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"{text!r} is invalid: use a number of seconds {bound} {low:g}"
            )
        return value

    return parse


def positive_seconds(text: str) -> float:
    """Parse a flag value that must be a finite number of seconds > 0."""
    return seconds_at_least(0.0, inclusive=False)(text)


def int_list(low: int) -> Callable[[str], list[int]]:
    """Return a parser of integers >= `low` separated by commas or spaces (`16,64` or `16 64`)."""

    def parse(text: str) -> list[int]:
        parts = text.replace(",", " ").split()
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: use at least one integer")
        try:
            return [int_at_least(part, low) for part in parts]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is invalid: use integers >= {low}, separated by commas or spaces"
            ) from None

    return parse


def default_data() -> tuple[Path, str]:
    """Return the default log, and where its folder came from for an error message: the folder
    HIERTCN_DATA_DIR names, else ../shared/data beside the clone."""
    data_dir = os.environ.get("HIERTCN_DATA_DIR")
    if data_dir is not None:
        return Path(data_dir) / DEFAULT_DATA, f"HIERTCN_DATA_DIR is {data_dir!r}"
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return shared / DEFAULT_DATA, f"HIERTCN_DATA_DIR is unset, so the folder is {shared}"
