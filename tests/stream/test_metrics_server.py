"""The metrics server over real sockets: the methods each path accepts, the socket timeout of
idle connections, and the cap on connections served at once."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.errors import ConfigError
from stream.health import HealthReport, check_liveness, check_readiness
from stream.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
from stream.metrics_server import ServerLimits, _start_server, serve_aggregate
from tests.stream.test_health import NOW, STALL, running

PATHS = ["/metrics", "/healthz", "/readyz"]
# A half-sent request: the request line and one header, without the blank line that ends it.
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"


class LiveHealth:
    """A health source whose workers are all live and ready."""

    def liveness(self) -> HealthReport:
        return check_liveness([running(0)], False, STALL, NOW)

    def readiness(self) -> HealthReport:
        return check_readiness([running(0)], False, STALL, NOW)


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    path = prepare_multiprocess_dir(tmp_path)
    yield path
    remove_multiprocess_dir(path)


def start(limits: ServerLimits) -> Any:
    server, _thread = serve_aggregate("127.0.0.1", 0, LiveHealth(), limits)
    return server


def stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture
def port(metrics_dir: Path) -> Iterator[int]:
    server = start(ServerLimits())
    try:
        yield server.server_port
    finally:
        stop(server)


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` and return every byte that the server sends until it closes.

    A server that closes without reading the request may reset the connection, which counts
    as closing without a response.
    """
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            connection.sendall(request)
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split a raw HTTP/1.0 response into its status code, headers and body."""
    head, _blank, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _colon, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    raw = exchange(port, f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return parse_response(raw)


def handler_threads() -> set[threading.Thread]:
    """Return the live threads of socketserver that handle one connection each."""
    return {thread for thread in threading.enumerate() if "process_request_thread" in thread.name}


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def open_half_requests(port: int, count: int) -> list[socket.socket]:
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(HALF_REQUEST)
        connections.append(connection)
    return connections


# -- methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_get_serves_every_path(port: int, path: str) -> None:
    status, headers, body = request(port, "GET", path)

    assert status == 200
    assert body
    assert int(headers["content-length"]) == len(body)


@pytest.mark.parametrize("path", PATHS)
def test_head_has_get_headers_no_body(port: int, path: str) -> None:
    _get_status, get_headers, get_body = request(port, "GET", path)

    status, headers, body = request(port, "HEAD", path)

    assert status == 200
    assert body == b""
    assert headers["content-type"] == get_headers["content-type"]
    assert int(headers["content-length"]) == len(get_body)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", PATHS)
def test_other_methods_get_405(port: int, path: str, method: str) -> None:
    status, headers, body = request(port, method, path)

    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert body == f"method {method} is not allowed on {path}: use GET or HEAD\n".encode()


def test_unknown_path_404_for_post(port: int) -> None:
    status, headers, _body = request(port, "POST", "/admin")

    assert status == 404
    assert "allow" not in headers


# -- timeout and connection cap ------------------------------------------------------------------


def test_half_sent_request_closed_after_timeout(metrics_dir: Path) -> None:
    server = start(ServerLimits(request_timeout=0.5))
    try:
        (connection,) = open_half_requests(server.server_port, 1)
        started = time.monotonic()
        received = connection.recv(65536)
        elapsed = time.monotonic() - started
        connection.close()
    finally:
        stop(server)

    assert received == b""  # closed without a response
    assert 0.3 < elapsed < 5.0


def test_idle_threads_end_after_timeout(metrics_dir: Path) -> None:
    before = handler_threads()
    server = start(ServerLimits(request_timeout=0.5))
    try:
        connections = open_half_requests(server.server_port, 20)
        opened = wait_for(lambda: len(handler_threads() - before) == 20, 5.0)
        ended = wait_for(lambda: not handler_threads() - before, 5.0)
        for connection in connections:
            connection.close()
    finally:
        stop(server)

    assert opened
    assert ended


def test_cap_holds_while_healthz_responds(metrics_dir: Path) -> None:
    before = handler_threads()
    server = start(ServerLimits(request_timeout=60.0, max_connections=4))
    port = server.server_port
    try:
        connections = open_half_requests(port, 40)
        time.sleep(0.5)
        during_flood = len(handler_threads() - before)
        started = time.monotonic()
        status, _headers, body = request(port, "GET", "/healthz")
        healthz_seconds = time.monotonic() - started
        after_probe = len(handler_threads() - before)
        for connection in connections:
            connection.close()
    finally:
        stop(server)

    assert during_flood <= 4
    assert after_probe <= 4
    assert status == 200
    assert b'"status": "ok"' in body
    assert healthz_seconds < 2.0


def test_connection_over_cap_closed_when_none_idle(metrics_dir: Path) -> None:
    # Two requests whose responses the app holds back fill the cap of 2 with busy connections.
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocking_app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        entered.release()
        release.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = _start_server("127.0.0.1", 0, blocking_app, ServerLimits(max_connections=2))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_port
    results: list[bytes] = []
    busy = [
        threading.Thread(target=lambda: results.append(exchange(port, b"GET / HTTP/1.0\r\n\r\n")))
        for _ in range(2)
    ]
    try:
        for client in busy:
            client.start()
        assert entered.acquire(timeout=5)
        assert entered.acquire(timeout=5)

        started = time.monotonic()
        over_cap = exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        for client in busy:
            client.join(10)
        server.shutdown()
        server.server_close()

    assert over_cap == b""
    assert elapsed < 3.0
    assert len(results) == 2
    assert all(result.endswith(b"\r\n\r\nok") for result in results)


def test_failed_response_logged_not_printed(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    def failing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("collector failed")

    server = _start_server("127.0.0.1", 0, failing_app, ServerLimits())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="stream.metrics_server"):
            response = exchange(server.server_port, b"GET /metrics HTTP/1.0\r\n\r\n")
            deadline = time.monotonic() + 5
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()

    assert response.startswith(b"HTTP/1.0 500 ")
    assert capfd.readouterr().err == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["response to 127.0.0.1 failed: RuntimeError: collector failed"]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"request_timeout": 0}, "request timeout 0 is invalid: use a number of seconds > 0"),
        ({"max_connections": 0}, "max connections 0 is invalid: use an integer >= 1"),
    ],
)
def test_invalid_limits_rejected(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServerLimits(**limits)

    assert str(raised.value) == message
