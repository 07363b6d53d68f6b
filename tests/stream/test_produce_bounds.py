"""Limits of `hiertcn-stream produce --rate` and `--session-gap`, and numbers shown as typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cli import main
from stream.config import MAX_SESSION_GAP, MIN_SESSION_GAP
from stream.errors import ConfigError
from stream.produce import (
    MAX_PRODUCE_SESSION_GAP,
    MAX_TIMEOUT_SECONDS,
    MIN_PRODUCE_SESSION_GAP,
    MIN_RATE,
    ProduceConfig,
)

RATE_FIX = (
    "use at least 1e-6 events per second (one event per 1000000 s), or leave --rate out to "
    "publish as fast as possible"
)
SESSION_GAP_FIX = (
    "use a value from 0.001 to 31536000000 in the unit of the events' ts (the maximum is 365 "
    "days in milliseconds)"
)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text('{"user": "u1", "item": "i1", "ts": 1}\n', encoding="utf-8")
    return path


def produce_error(events: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """Run produce with `flags`, which must fail before it connects, and return stderr."""
    argv = ["produce", "--events", str(events), "--brokers", "127.0.0.1:1", "--topic", "t"]
    try:
        code = main([*argv, *flags])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    return capsys.readouterr().err


def test_limits_follow_run_session_gap() -> None:
    assert MIN_PRODUCE_SESSION_GAP == MIN_SESSION_GAP
    assert MAX_PRODUCE_SESSION_GAP == MAX_SESSION_GAP * 1000
    assert MIN_RATE == 1 / MAX_TIMEOUT_SECONDS


@pytest.mark.parametrize("rate", [MIN_RATE, 0.5, 1e9])
def test_rate_in_range_accepted(rate: float) -> None:
    assert ProduceConfig("h:1", "t", rate=rate).rate == rate


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(1e-320, "1e-320"), (5e-324, "5e-324"), (MIN_RATE / 2, "5e-7"), (-1.0, "-1"), (0.0, "0")],
)
def test_rate_below_minimum_rejected(rate: float, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ProduceConfig("h:1", "t", rate=rate)

    assert str(raised.value) == f"--rate {shown} is invalid: {RATE_FIX}"


@pytest.mark.parametrize("gap", [MIN_PRODUCE_SESSION_GAP, 1800.0, MAX_PRODUCE_SESSION_GAP])
def test_session_gap_in_range_accepted(gap: float) -> None:
    assert ProduceConfig("h:1", "t", session_gap=gap).session_gap == gap


@pytest.mark.parametrize(
    ("gap", "shown"),
    [
        (MAX_PRODUCE_SESSION_GAP + 1, "31536000001"),
        (1e300, "1e300"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (0.0, "0"),
        (1e-4, "0.0001"),
    ],
)
def test_session_gap_outside_range_rejected(gap: float, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ProduceConfig("h:1", "t", session_gap=gap)

    assert str(raised.value) == f"--session-gap {shown} is invalid: {SESSION_GAP_FIX}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "1e-320"], f"--rate 1e-320 is invalid: {RATE_FIX}"),
        (["--rate", "1E-7"], f"--rate 1E-7 is invalid: {RATE_FIX}"),
        (["--session-gap", "1e20"], f"--session-gap 1e20 is invalid: {SESSION_GAP_FIX}"),
        (["--session-gap", "0.00010"], f"--session-gap 0.00010 is invalid: {SESSION_GAP_FIX}"),
        (["--flush-timeout", "1e-7"], "--flush-timeout 1e-7 is invalid: use a number of seconds"),
        (["--connect-timeout", "2e6"], "--connect-timeout 2e6 is invalid: use a number of seconds"),
        (
            ["--flush-timeout", "5.0", "-X", "message.timeout.ms=100"],
            "-X message.timeout.ms would replace the delivery wait of --flush-timeout 5.0",
        ),
    ],
)
def test_message_quotes_number_as_typed(
    events: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    error = produce_error(events, capsys, *flags)

    assert f"hiertcn-stream: error: {message}" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "text", "read_as"),
    [
        ("--rate", "1e-400", "0"),
        ("--session-gap", "1e999", "inf"),
        ("--flush-timeout", "-1e-400", "0"),
        ("--connect-timeout", "1e400", "inf"),
    ],
)
def test_number_beyond_float_rejected(
    events: Path, capsys: pytest.CaptureFixture[str], flag: str, text: str, read_as: str
) -> None:
    error = produce_error(events, capsys, f"{flag}={text}")

    last_line = error.splitlines()[-1]
    assert last_line == (
        f"hiertcn-stream produce: error: argument {flag}: {text} is invalid: a 64-bit float "
        f"reads it as {read_as}, so write a number whose magnitude is from 4.9e-324 to 1.79e308"
    )


def test_help_names_rate_and_gap_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["produce", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert "events per second to publish, at least 1e-6" in help_text
    assert "event-time order, from 0.001 to 31536000000" in help_text
