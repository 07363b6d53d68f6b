"""Argument checks of `ops/kafka/kafka.sh`, which run before any broker or Java is needed."""

from __future__ import annotations

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

    assert completed.returncode == 1
    assert f"kafka.sh: option {flag} needs a value" in completed.stderr
    assert "unbound variable" not in completed.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--timeout", "abc"], "invalid --timeout abc: expected whole seconds from 1 to 999999"),
        (["--timeout", "0"], "invalid --timeout 0: expected whole seconds"),
        (["-n", "abc"], "invalid -n abc: expected a number of lines >= 0"),
        (["-n", "-5"], "invalid -n -5: expected a number of lines >= 0"),
    ],
)
def test_invalid_number_named(tmp_path: Path, flags: list[str], message: str) -> None:
    completed = _script("stop", "--state-dir", str(tmp_path / "kafka"), *flags)

    assert completed.returncode == 1
    assert f"kafka.sh: {message}" in completed.stderr
    assert not (tmp_path / "kafka").exists()


@pytest.mark.parametrize("port", ["abc", "70000", "-1"])
def test_invalid_port_rejected_before_any_command(tmp_path: Path, port: str) -> None:
    completed = _script("restart", "--state-dir", str(tmp_path / "kafka"), "--port", port)

    assert completed.returncode == 1
    assert f"kafka.sh: invalid port {port}: expected 1 to 65535" in completed.stderr


def test_linked_state_dir_keeps_link_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)

    completed = _script("status", "--state-dir", str(link))

    assert completed.returncode == 3
    assert f"not running (state folder {link})" in completed.stderr
