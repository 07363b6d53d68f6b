"""Argument checks of `ops/kafka/kafka.sh`, which run before any broker or Java is needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ops.kafka.broker import KAFKA_SCRIPT


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(KAFKA_SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("command", ["status", "stop", "logs"])
def test_reading_command_creates_no_folder(tmp_path: Path, command: str) -> None:
    state_dir = tmp_path / "absent" / "kafka"

    completed = _script(command, "--state-dir", str(state_dir))

    assert completed.returncode in (0, 1, 3)
    assert not state_dir.parent.exists()
    assert str(state_dir) in completed.stdout + completed.stderr


def test_logs_without_log_named(tmp_path: Path) -> None:
    completed = _script("logs", "--state-dir", str(tmp_path))

    assert completed.returncode == 1
    assert f"no broker log in {tmp_path}: start a broker there first" in completed.stderr


@pytest.mark.parametrize("flag", ["--state-dir", "--port", "--timeout", "-n"])
def test_option_without_value_named(flag: str) -> None:
    completed = _script("status", flag)

    assert completed.returncode == 2
    assert f"kafka.sh: option {flag} needs a value" in completed.stderr
    assert "unbound variable" not in completed.stderr


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("stop", ["--timeout", "abc"], "invalid --timeout abc: expected whole seconds from 1 to"),
        ("stop", ["--timeout", "0"], "invalid --timeout 0: expected whole seconds"),
        ("stop", ["--timeout", "000"], "invalid --timeout 000: expected whole seconds"),
        ("stop", ["--timeout", "0001000000"], "invalid --timeout 0001000000: expected whole"),
        ("stop", ["--timeout", "-5"], "invalid --timeout -5: expected whole seconds"),
        ("logs", ["-n", "abc"], "invalid -n abc: expected a number of lines from 0 to 999999999"),
        ("logs", ["-n", "-5"], "invalid -n -5: expected a number of lines from 0 to 999999999"),
        ("logs", ["-n", "1234567890"], "invalid -n 1234567890: expected a number of lines"),
    ],
)
def test_invalid_number_named(tmp_path: Path, command: str, flags: list[str], message: str) -> None:
    completed = _script(command, "--state-dir", str(tmp_path / "kafka"), *flags)

    assert completed.returncode == 2
    assert completed.stderr.startswith(f"kafka.sh: {message}")
    assert completed.stderr.count("\n") == 1
    assert not (tmp_path / "kafka").exists()


@pytest.mark.parametrize("port", ["abc", "70000", "-1", "0065536"])
def test_invalid_port_rejected_before_any_command(tmp_path: Path, port: str) -> None:
    completed = _script("restart", "--state-dir", str(tmp_path / "kafka"), "--port", port)

    assert completed.returncode == 2
    assert f"kafka.sh: invalid port {port}: expected 1 to 65535" in completed.stderr


def test_timeout_leading_zeros_read_as_decimal(tmp_path: Path) -> None:
    # 010 would be octal 8 in bash arithmetic, and 008 no number at all.
    for timeout in ("007", "008", "010"):
        completed = _script("stop", "--state-dir", str(tmp_path / "kafka"), "--timeout", timeout)

        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == f"no broker running for {tmp_path / 'kafka'}\n"


def test_lines_leading_zeros_read_as_decimal(tmp_path: Path) -> None:
    (tmp_path / "broker.log").write_text("".join(f"line {n}\n" for n in range(20)))

    completed = _script("logs", "--state-dir", str(tmp_path), "-n", "010")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [f"line {n}" for n in range(10, 20)]


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("stop", ["-n", "abc"]),
        ("status", ["-n", "abc", "--port", "xyz", "--timeout", "0"]),
        ("logs", ["--port", "70000", "--timeout", "abc"]),
    ],
)
def test_unread_option_not_checked(tmp_path: Path, command: str, flags: list[str]) -> None:
    (tmp_path / "broker.log").write_text("line\n")

    completed = _script(command, "--state-dir", str(tmp_path), *flags)

    assert "invalid" not in completed.stderr
    assert completed.returncode in (0, 3), completed.stderr


def test_unread_port_variable_not_checked(tmp_path: Path) -> None:
    command = ["bash", str(KAFKA_SCRIPT), "status", "--state-dir", str(tmp_path)]
    environ = {**os.environ, "KAFKA_PORT": "abc"}

    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=60, env=environ
    )

    assert completed.returncode == 3
    assert "invalid port" not in completed.stderr


def test_options_before_command(tmp_path: Path) -> None:
    (tmp_path / "broker.log").write_text("first\nsecond\n")

    completed = _script("--state-dir", str(tmp_path), "-n", "1", "logs")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "second\n"


def test_options_around_command_checked(tmp_path: Path) -> None:
    completed = _script("-n", "x", "--state-dir", str(tmp_path), "logs")

    assert completed.returncode == 2
    assert "kafka.sh: invalid -n x: expected a number of lines" in completed.stderr


def test_keep_data_before_other_command_rejected(tmp_path: Path) -> None:
    completed = _script("--keep-data", "status", "--state-dir", str(tmp_path))

    assert completed.returncode == 2
    assert "kafka.sh: --keep-data is an option of stop only" in completed.stderr


def test_second_command_rejected(tmp_path: Path) -> None:
    completed = _script("status", "stop", "--state-dir", str(tmp_path))

    assert completed.returncode == 2
    assert "kafka.sh: unexpected argument stop after the subcommand status" in completed.stderr


@pytest.mark.parametrize("argv", [[], ["--state-dir", "/nonexistent/kafka"]])
def test_missing_command_prints_usage(argv: list[str]) -> None:
    completed = _script(*argv)

    assert completed.returncode == 2
    assert "ops/kafka/kafka.sh start [--port N]" in completed.stdout


@pytest.mark.parametrize("argv", [["--help"], ["help"], ["logs", "-h"], ["-h", "start"]])
def test_help_anywhere_prints_usage(argv: list[str]) -> None:
    completed = _script(*argv)

    assert completed.returncode == 0
    assert "Options may come before or after the subcommand" in completed.stdout


def test_unknown_command_named() -> None:
    completed = _script("frob")

    assert completed.returncode == 2
    assert "kafka.sh: unknown subcommand frob: expected fetch, start" in completed.stderr


def test_help_describes_every_flag() -> None:
    help_text = " ".join(_script("--help").stdout.split())

    for flag in ("--state-dir DIR", "--port N", "--timeout S", "--keep-data", "-n LINES"):
        assert flag in help_text
    assert "leading zeros are allowed: 007 is 7" in help_text
    assert "--port defaults to $KAFKA_PORT, else 0 for a free port" in help_text


def test_linked_state_dir_keeps_link_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)

    completed = _script("status", "--state-dir", str(link))

    assert completed.returncode == 3
    assert f"not running (state folder {link})" in completed.stderr
