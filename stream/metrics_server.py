"""The HTTP server of a worker pool: Prometheus /metrics, and the /healthz and /readyz probes.

It serves the sum over every worker process of the pool, which prometheus_client's multiprocess
mode collects from the files under `PROMETHEUS_MULTIPROC_DIR` (`stream.metrics`). When the pool
passes its `HealthSource` (rules in `stream.health`), the server also serves /healthz and
/readyz and adds two gauges computed at scrape time, `hiertcn_worker_heartbeat_age_seconds` and
`hiertcn_workers_configured`.

Every path accepts GET and HEAD and returns 405 to other methods. At most
`ServerLimits.max_connections` connections get a handler thread at once, and a socket read or
write that waits longer than `ServerLimits.request_timeout` closes the connection, so idle or
slow clients cannot hold an unbounded number of threads.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from stream.errors import ConfigError
from stream.health import HealthReport, HealthSource
from stream.logs import RateLimitedLog

logger = logging.getLogger(__name__)

# The methods that every path accepts. The others get 405 with this list in `Allow`.
ALLOWED_METHODS = ("GET", "HEAD")
# Seconds that a new connection waits for the slot of an evicted idle connection to free up.
_EVICTION_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class ServerLimits:
    """Limits on the connections of the metrics server.

    `request_timeout` is the seconds one socket read or write of a connection may wait. A
    scraper or probe sends its whole request at once, and Prometheus's default scrape_timeout
    is 10 s, so 10 s of silence only comes from a stalled or hostile client.
    `max_connections` caps the connections handled at once, each by one thread. Prometheus
    and the kubelet make a few requests at a time, far below the default of 64.
    """

    request_timeout: float = 10.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if not self.request_timeout > 0:
            raise ConfigError(
                f"request timeout {self.request_timeout!r} is invalid: use a number of seconds > 0"
            )
        if self.max_connections < 1:
            raise ConfigError(
                f"max connections {self.max_connections!r} is invalid: use an integer >= 1"
            )


def serve_aggregate(
    address: str,
    port: int,
    health: HealthSource | None = None,
    limits: ServerLimits = ServerLimits(),
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Serve the sum over every process of the pool at http://address:port/metrics.

    With `health`, the server also serves /healthz and /readyz and exports the heartbeat age of
    each worker. Returns the server and its thread; call `server.shutdown()` to stop it. Raises
    `ConfigError` when the port cannot be bound.
    """
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if health is not None:
        registry.register(HeartbeatAgeCollector(health))
    app = routing_app(make_wsgi_app(registry), health)
    try:
        server = _start_server(address, port, app, limits)
    except OSError as error:
        reason = "is already in use" if error.errno == errno.EADDRINUSE else f"failed ({error})"
        raise ConfigError(
            f"metrics port {format_host_port(address, port)} {reason}: pass --metrics-port N, "
            "or 0 to turn the endpoint off"
        ) from error
    thread = threading.Thread(target=server.serve_forever, name="hiertcn-metrics", daemon=True)
    thread.start()
    paths = "/metrics, /healthz and /readyz" if health is not None else "/metrics"
    logger.info("serving %s at http://%s", paths, format_host_port(address, server.server_port))
    return server, thread


class _BoundedServer(ThreadingWSGIServer):
    """A threading WSGI server that handles at most `limits.max_connections` connections at once.

    A connection over the cap takes the slot of the oldest connection that has not sent its
    whole request head yet. A probe sends its request at once, so a slow or idle client cannot
    keep /healthz from responding. With no such connection, the new one is closed at once.
    `_start_server` sets `limits` on a subclass before binding.
    """

    limits: ServerLimits = ServerLimits()
    # The listen backlog. socketserver's default of 5 drops the SYN of a probe that comes while
    # 5 connections wait to be accepted, and the client resends it only after 1 s.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._lock = threading.Lock()
        # The client host of each connection still reading its request head, oldest first
        # (dicts keep insertion order).
        self._waiting: dict[socket.socket, str] = {}
        self._closed_log = RateLimitedLog(
            "closed connections", "reason", logger=logger, singular="closed connection"
        )
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a handler thread for `request` when a slot is free or can be freed."""
        if not self._slots.acquire(blocking=False):
            evicted = self._evict_oldest_waiting()
            if not evicted or not self._slots.acquire(timeout=_EVICTION_WAIT_SECONDS):
                self.log_closed(
                    "over the limit",
                    "rejected a connection from %s: the server is serving %d connections, "
                    "its limit, and none of them is idle",
                    client_address[0],
                    self.limits.max_connections,
                )
                self.shutdown_request(request)
                return
        with self._lock:
            self._waiting[request] = client_address[0]
        try:
            super().process_request(request, client_address)
        except BaseException:
            # socketserver's caller logs the error and closes the connection.
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def claim_request(self, request: socket.socket) -> bool:
        """Mark that `request` has sent its request head, or return False if it was evicted."""
        with self._lock:
            if request not in self._waiting:
                return False
            del self._waiting[request]
            return True

    def log_closed(self, reason: str, message: str, *args: object) -> None:
        """Log a connection closed for `reason`, rate-limited per reason."""
        with self._lock:
            self._closed_log.add(reason, message, *args)
            self._closed_log.flush()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an error of a handler thread, rate-limited, instead of printing it to stderr."""
        error = sys.exc_info()[1]
        logger.debug("request from %s failed", client_address[0], exc_info=True)
        self.log_closed("failed", "request from %s failed: %r", client_address[0], error)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._waiting.pop(request, None)
        self._slots.release()

    def _evict_oldest_waiting(self) -> bool:
        """Close the oldest connection still reading its request head, to free its slot."""
        with self._lock:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                return False
            host = self._waiting.pop(oldest)
        # Its handler thread then reads end-of-file and exits without a response. OSError means
        # that the client has closed the connection already.
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)
        self.log_closed(
            "evicted",
            "closed an idle connection from %s to serve a new one: %d connections are the limit",
            host,
            self.limits.max_connections,
        )
        return True


class _ResponseErrors(io.StringIO):
    """The stderr of wsgiref's response handler, which prints there the traceback of a response
    that failed: a write that timed out, or an application that raised. Each flush logs it."""

    def __init__(self, server: _BoundedServer, host: str) -> None:
        super().__init__()
        self._server = server
        self._host = host

    def flush(self) -> None:
        text = self.getvalue().strip()
        if not text:
            return
        self.seek(0)
        self.truncate()
        logger.debug("response to %s failed:\n%s", self._host, text)
        reason = text.splitlines()[-1]
        self._server.log_closed("failed", "response to %s failed: %s", self._host, reason)


class _QuietHandler(WSGIRequestHandler):
    """A request handler with the server's socket timeout that does not write a line to stderr
    for every scrape and probe, nor a traceback for a failed response."""

    server: _BoundedServer

    def setup(self) -> None:
        # StreamRequestHandler.setup applies `timeout` to every read and write of the socket.
        # NOTE: it bounds each read, not the whole request, so a client that sends a byte now
        # and then keeps its thread until the cap makes the server evict it.
        self.timeout = self.server.limits.request_timeout
        super().setup()

    def get_stderr(self) -> io.StringIO:
        return _ResponseErrors(self.server, self.client_address[0])

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:
            self.server.log_closed(
                "timed out",
                "closed the connection from %s: no data for %g s",
                self.client_address[0],
                self.timeout,
            )
        except ConnectionError as error:
            logger.debug("connection from %s failed: %s", self.client_address[0], error)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        # An evicted connection has read end-of-file within its head, so it gets no response.
        return self.server.claim_request(self.request) and parsed

    def log_message(self, format: str, *args: Any) -> None:
        pass


def format_host_port(host: str, port: int) -> str:
    """Return `host:port` as a URL writes it, with an IPv6 literal in brackets: `[::1]:9100`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _start_server(
    address: str, port: int, app: Callable[..., Any], limits: ServerLimits
) -> ThreadingWSGIServer:
    """Bind a threading WSGI server as prometheus_client's `start_http_server` does, with `app`.

    An address that does not resolve raises `socket.gaierror`, an OSError.
    """
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, sockaddr = infos[0]

    class Server(_BoundedServer):
        address_family = family

    Server.limits = limits
    return make_server(sockaddr[0], port, app, Server, handler_class=_QuietHandler)


def routing_app(metrics_app: Callable[..., Any], health: HealthSource | None) -> Callable[..., Any]:
    """Route /metrics to `metrics_app`, and /healthz and /readyz to `health`'s reports.

    Every other path, / included, gets 404, so that a mistyped probe path fails instead of
    returning the metrics with 200 (prometheus_client's app serves any path). Prometheus scrapes
    /metrics unless its `metrics_path` names another path. Without `health`, only /metrics exists.
    Each path accepts GET and HEAD and returns 405 with an `Allow` header to other methods.
    """
    checks = {} if health is None else {"/healthz": health.liveness, "/readyz": health.readiness}
    known = "/metrics, /healthz or /readyz" if checks else "/metrics"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        check = checks.get(path)
        if path != "/metrics" and check is None:
            body = f"path {path!r} not found: use {known}\n".encode()
            return _respond(environ, start_response, "404 Not Found", "text/plain", body)

        method = environ.get("REQUEST_METHOD", "")
        if method not in ALLOWED_METHODS:
            body = f"method {method} is not allowed on {path}: use GET or HEAD\n".encode()
            allow = [("Allow", ", ".join(ALLOWED_METHODS))]
            return _respond(
                environ, start_response, "405 Method Not Allowed", "text/plain", body, allow
            )

        if check is None:
            return _serve_metrics(metrics_app, environ, start_response)
        report: HealthReport = check()
        return _respond(
            environ, start_response, report.http_status, "application/json", report.to_json()
        )

    return app


def _serve_metrics(
    metrics_app: Callable[..., Any], environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """Serve GET with `metrics_app`, and HEAD with the headers of its GET response.

    prometheus_client's app (0.26) serves only GET and OPTIONS, so a HEAD request is passed
    to it as GET and its body is dropped.
    """
    if environ.get("REQUEST_METHOD") != "HEAD":
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    response: list[Any] = []

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        response.extend([status, headers])

    result = metrics_app({**environ, "REQUEST_METHOD": "GET"}, capture)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = response
    if not any(name.lower() == "content-length" for name, _value in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [b""]


def _respond(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    status: str,
    content_type: str,
    body: bytes,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Iterable[bytes]:
    """Send one uncached response; a HEAD request gets the headers only."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *extra_headers,
    ]
    start_response(status, headers)
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]


class HeartbeatAgeCollector(Collector):
    """The gauges `hiertcn_worker_heartbeat_age_seconds` and `hiertcn_workers_configured`,
    read from the pool at each scrape."""

    def __init__(self, health: HealthSource) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.health.liveness()
        yield GaugeMetricFamily(
            "hiertcn_workers_configured",
            "Worker processes the pool was started with (--processes); "
            "hiertcn_workers_running below it means a worker has exited or not started yet.",
            value=len(report.workers),
        )
        gauge = GaugeMetricFamily(
            "hiertcn_worker_heartbeat_age_seconds",
            "Seconds since the worker's main loop last turned; /healthz fails above "
            "--health-stall-seconds. Workers that have exited are left out.",
            labels=["worker"],
        )
        for status in report.workers:
            if not status.exited:
                age = max(report.now - status.last_beat, 0.0)
                gauge.add_metric([str(status.index)], age)
        yield gauge
