"""Tests of metrics addresses in logs and errors: an IPv6 literal goes in brackets, as in URLs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream import pool as pool_module
from stream.cli import main
from stream.config import WorkerConfig, build_config, parse_bind_address
from stream.errors import ConfigError
from stream.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
from stream.metrics_server import format_host_port, serve_aggregate


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not ipv6_loopback_available(), reason="this machine has no IPv6 loopback address ::1"
)


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    path = prepare_multiprocess_dir(tmp_path)
    yield path
    remove_multiprocess_dir(path)


@pytest.fixture
def busy_ipv6_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 9100, "127.0.0.1:9100"),
        ("0.0.0.0", 0, "0.0.0.0:0"),
        ("localhost", 80, "localhost:80"),
        ("::1", 19556, "[::1]:19556"),
        ("::", 9100, "[::]:9100"),
        ("2001:db8::5", 443, "[2001:db8::5]:443"),
    ],
)
def test_format_host_port(host: str, port: int, expected: str) -> None:
    assert format_host_port(host, port) == expected


@needs_ipv6
def test_ipv6_server_logs_bracketed_url(
    metrics_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="stream.metrics_server"):
        server, _thread = serve_aggregate("::1", 0)
    try:
        port = server.server_port
    finally:
        server.shutdown()
        server.server_close()

    assert f"serving /metrics at http://[::1]:{port}" in caplog.text
    assert "http://::1" not in caplog.text


@needs_ipv6
def test_ipv6_port_in_use_bracketed(metrics_dir: Path, busy_ipv6_port: int) -> None:
    with pytest.raises(ConfigError) as raised:
        serve_aggregate("::1", busy_ipv6_port)

    assert str(raised.value).startswith(f"metrics port [::1]:{busy_ipv6_port} is already in use")


@needs_ipv6
def test_ipv6_port_check_bracketed(tmp_path: Path, busy_ipv6_port: int) -> None:
    config = WorkerConfig(
        brokers="127.0.0.1:1",
        bundle=tmp_path,
        metrics_address="::1",
        metrics_port=busy_ipv6_port,
    )

    with pytest.raises(ConfigError) as raised:
        pool_module.check_metrics_port(config)

    assert str(raised.value).startswith(f"metrics port [::1]:{busy_ipv6_port} is already in use")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::]", "::"),
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("localhost", "localhost"),
        ("[fe80::1%eth0]", "fe80::1%eth0"),
        ("2001:db8::5", "2001:db8::5"),
    ],
)
def test_bind_address_brackets_removed(text: str, expected: str) -> None:
    assert parse_bind_address(text) == expected


PORT_FIX = "give the port with --metrics-port (HIERTCN_METRICS_PORT), and the address alone"
BRACKETS_FIX = "write an IPv6 address in one pair of brackets or none (::1 or [::1])"
FORMS_FIX = "use a host name, an IPv4 address, or an IPv6 address with or without brackets"


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("[[::1]]:9100", BRACKETS_FIX),
        ("[]:9100", BRACKETS_FIX),
        ("[::1:9100", BRACKETS_FIX),
        ("[]", BRACKETS_FIX),
        ("[x", BRACKETS_FIX),
        ("[127.0.0.1]", BRACKETS_FIX),
        ("[::1]x", BRACKETS_FIX),
        ("::1]", BRACKETS_FIX),
        ("[::1]:9100", PORT_FIX),
        ("127.0.0.1:9100", PORT_FIX),
        ("localhost:9100", PORT_FIX),
        ("1:2:x::", FORMS_FIX),
        ("", FORMS_FIX),
        (" ", FORMS_FIX),
        ("http://127.0.0.1", "remove the URL scheme: " + FORMS_FIX),
        ("127.0.0.1 ", "remove the white space: " + FORMS_FIX),
        (" ::1", "remove the white space: " + FORMS_FIX),
        ("a b", "remove the white space: " + FORMS_FIX),
    ],
)
def test_bind_address_odd_form_named(text: str, fix: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_bind_address(text)

    message = str(raised.value)
    assert message.startswith(f"{text!r} is invalid: {fix}")
    assert "such as" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["[]:9100", "[::1]:9100", "[[::1]]:9100"])
def test_bind_address_flag_error_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    argv = ["run", "--brokers", "127.0.0.1:1", "--bundle", str(tmp_path)]

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--metrics-address", text])

    assert exit_info.value.code == 2
    error_lines = capsys.readouterr().err.splitlines()
    assert error_lines[-1].startswith(
        f"hiertcn-stream run: error: argument --metrics-address: {text!r} is invalid: "
    )
    assert "such as" in error_lines[-1]
    assert "Name or service not known" not in error_lines[-1]


def test_bind_address_variable_error_named(tmp_path: Path) -> None:
    environ = {"HIERTCN_METRICS_ADDRESS": "[::1]:9100"}

    with pytest.raises(ConfigError) as raised:
        build_config({"brokers": "127.0.0.1:1", "bundle": tmp_path}, environ)

    message = str(raised.value)
    assert message.startswith(f"HIERTCN_METRICS_ADDRESS='[::1]:9100' is invalid: {PORT_FIX}")
    assert message.endswith(", or unset it")


@needs_ipv6
def test_bracketed_variable_binds_ipv6(tmp_path: Path, busy_ipv6_port: int) -> None:
    environ = {"HIERTCN_METRICS_ADDRESS": "[::1]", "HIERTCN_METRICS_PORT": str(busy_ipv6_port)}
    config = build_config({"brokers": "127.0.0.1:1", "bundle": tmp_path}, environ)

    with pytest.raises(ConfigError) as raised:
        pool_module.check_metrics_port(config)

    assert config.metrics_address == "::1"
    assert str(raised.value).startswith(f"metrics port [::1]:{busy_ipv6_port} is already in use")
