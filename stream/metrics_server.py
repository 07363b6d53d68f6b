"""The HTTP server of a worker pool: Prometheus /metrics, and the /healthz and /readyz probes.

It serves the sum over every worker process of the pool, which prometheus_client's multiprocess
mode collects from the files under `PROMETHEUS_MULTIPROC_DIR` (`stream.metrics`). When the pool
passes its `HealthSource` (rules in `stream.health`), the server also serves /healthz and
/readyz and adds two gauges computed at scrape time, `hiertcn_worker_heartbeat_age_seconds` and
`hiertcn_workers_configured`.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from stream.errors import ConfigError
from stream.health import HealthReport, HealthSource

logger = logging.getLogger(__name__)


def serve_aggregate(
    address: str, port: int, health: HealthSource | None = None
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
        server = _start_server(address, port, app)
    except OSError as error:
        reason = "is already in use" if error.errno == errno.EADDRINUSE else f"failed ({error})"
        raise ConfigError(
            f"metrics port {address}:{port} {reason}: pass --metrics-port N, "
            "or 0 to turn the endpoint off"
        ) from error
    thread = threading.Thread(target=server.serve_forever, name="hiertcn-metrics", daemon=True)
    thread.start()
    paths = "/metrics, /healthz and /readyz" if health is not None else "/metrics"
    logger.info("serving %s at http://%s:%d", paths, address, server.server_port)
    return server, thread


class _QuietHandler(WSGIRequestHandler):
    """A request handler that does not write a line to stderr for every scrape and probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _start_server(address: str, port: int, app: Callable[..., Any]) -> ThreadingWSGIServer:
    """Bind a threading WSGI server as prometheus_client's `start_http_server` does, with `app`.

    An address that does not resolve raises `socket.gaierror`, an OSError.
    """
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, sockaddr = infos[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return make_server(sockaddr[0], port, app, Server, handler_class=_QuietHandler)


def routing_app(metrics_app: Callable[..., Any], health: HealthSource | None) -> Callable[..., Any]:
    """Route /metrics to `metrics_app`, and /healthz and /readyz to `health`'s reports.

    Every other path, / included, gets 404, so that a mistyped probe path fails instead of
    returning the metrics with 200 (prometheus_client's app serves any path). Prometheus scrapes
    /metrics unless its `metrics_path` names another path. Without `health`, only /metrics exists.
    """
    checks = {} if health is None else {"/healthz": health.liveness, "/readyz": health.readiness}
    known = "/metrics, /healthz or /readyz" if checks else "/metrics"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        check = checks.get(path)
        if check is None:
            body = f"path {path!r} not found: use {known}\n".encode()
            return _respond(environ, start_response, "404 Not Found", "text/plain", body)
        report: HealthReport = check()
        return _respond(
            environ, start_response, report.http_status, "application/json", report.to_json()
        )

    return app


def _respond(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    status: str,
    content_type: str,
    body: bytes,
) -> Iterable[bytes]:
    """Send one uncached response; a HEAD request gets the headers only."""
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
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
