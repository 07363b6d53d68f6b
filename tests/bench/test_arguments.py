"""bench/arguments.py: the shared argument types, and their import when a script runs as a file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from bench.arguments import (
    int_at_least,
    int_list,
    positive_int,
    positive_seconds,
    seconds_at_least,
)
from tests.bench.conftest import BENCH_DIR


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("64", 64), (" 7 ", 7)])
def test_positive_int_accepts(text, expected):
    assert positive_int(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "abc", "1.5", ""])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        positive_int(text)

    assert str(error.value) == f"{text!r} is invalid: use an integer >= 1"


def test_int_at_least_zero_accepts_zero():
    assert int_at_least("0", 0) == 0


def test_int_at_least_zero_rejects_negative():
    with pytest.raises(argparse.ArgumentTypeError, match="use an integer >= 0"):
        int_at_least("-1", 0)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "abc"])
def test_positive_seconds_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        positive_seconds(text)

    assert str(error.value) == f"{text!r} is invalid: use a number of seconds > 0"


def test_positive_seconds_accepts_fraction():
    assert positive_seconds("0.25") == 0.25


def test_inclusive_seconds_accept_bound():
    assert seconds_at_least(0.0, inclusive=True)("0") == 0.0


def test_inclusive_seconds_reject_below_bound():
    with pytest.raises(argparse.ArgumentTypeError, match="use a number of seconds >= 0"):
        seconds_at_least(0.0, inclusive=True)("-0.5")


@pytest.mark.parametrize(
    ("text", "expected"), [("16,64", [16, 64]), ("16 64", [16, 64]), ("16, 64,", [16, 64])]
)
def test_int_list_takes_commas_and_spaces(text, expected):
    assert int_list(1)(text) == expected


def test_int_list_rejects_empty():
    with pytest.raises(argparse.ArgumentTypeError, match="use at least one integer"):
        int_list(1)(" , ")


def test_int_list_names_whole_value():
    with pytest.raises(argparse.ArgumentTypeError) as error:
        int_list(1)("16,0")

    assert str(error.value) == (
        "'16,0' is invalid: use integers >= 1, separated by commas or spaces"
    )


@pytest.mark.parametrize("script", ["inference", "statestore", "stream", "train_speed"])
def test_script_run_as_file_imports_arguments(tmp_path, script):
    # The tests above import `bench.arguments` with the repository root already on sys.path. A
    # script run as `python bench/NAME.py` has only bench/ there and must add the root itself.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}

    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / f"{script}.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
