"""Liveness and readiness rules with a fake clock, the shared heartbeat table, and the HTTP
endpoints served by the real metrics server."""

from __future__ import annotations

import json
import multiprocessing
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.health import (
    HealthReport,
    HeartbeatTable,
    WorkerStatus,
    check_liveness,
    check_readiness,
)
from stream.metrics import prepare_multiprocess_dir, remove_multiprocess_dir
from stream.metrics_server import serve_aggregate

STALL = 30.0
NOW = 1_000.0


def running(index: int, silent: float = 1.0, ready: bool = True) -> WorkerStatus:
    return WorkerStatus(index, 100 + index, exited=False, ready=ready, last_beat=NOW - silent)


def exited(index: int) -> WorkerStatus:
    return WorkerStatus(index, 100 + index, exited=True, ready=True, last_beat=NOW - 500.0)


# -- liveness ----------------------------------------------------------------------------------


def test_liveness_ok_with_fresh_heartbeats() -> None:
    report = check_liveness([running(0), running(1)], False, STALL, NOW)

    assert report.ok
    assert report.status == "ok"
    assert report.problems == ()


def test_stall_problem_names_variable() -> None:
    stall_name = "HIERTCN_HEALTH_STALL_SECONDS"
    report = check_liveness([running(0, silent=42.5)], False, STALL, NOW, stall_name)

    (problem,) = report.problems
    assert problem.endswith("more than HIERTCN_HEALTH_STALL_SECONDS=30")


def test_liveness_fails_on_stalled_worker() -> None:
    report = check_liveness([running(0), running(1, silent=42.5)], False, STALL, NOW)

    assert not report.ok
    assert report.status == "failing"
    (problem,) = report.problems
    assert problem.startswith("worker 1 (pid 101) has not reported for 42.5 s")
    assert "--health-stall-seconds 30" in problem


def test_liveness_silence_at_limit_still_ok() -> None:
    report = check_liveness([running(0, silent=STALL)], False, STALL, NOW)

    assert report.ok


def test_liveness_fails_on_exited_worker() -> None:
    report = check_liveness([running(0), exited(1)], False, STALL, NOW)

    assert not report.ok
    (problem,) = report.problems
    assert problem.startswith("worker 1 (pid 101) has exited: 1 of 2 workers running")
    assert "restart the pool" in problem


def test_liveness_exited_worker_not_also_stalled() -> None:
    report = check_liveness([exited(0)], False, STALL, NOW)

    assert len(report.problems) == 1
    assert "has not reported" not in report.problems[0]


def test_liveness_ok_while_stopping() -> None:
    report = check_liveness([running(0, silent=500.0), exited(1)], True, STALL, NOW)

    assert report.ok
    assert report.status == "stopping"


def test_liveness_unstarted_worker_counts_from_pool_start() -> None:
    starting = WorkerStatus(0, None, exited=False, ready=False, last_beat=NOW - 31.0)

    report = check_liveness([starting], False, STALL, NOW)

    assert not report.ok
    assert report.problems[0].startswith("worker 0 (not started) has not reported for 31.0 s")


# -- readiness ---------------------------------------------------------------------------------


def test_readiness_ok_when_every_worker_joined() -> None:
    report = check_readiness([running(0), running(1)], False, STALL, NOW)

    assert report.ok
    assert report.status == "ok"


def test_readiness_waits_for_every_worker() -> None:
    report = check_readiness([running(0), running(1, ready=False)], False, STALL, NOW)

    assert not report.ok
    assert report.status == "not ready"
    assert report.problems == ("worker 1 (pid 101) has not joined the consumer group yet",)


def test_readiness_fails_while_stopping() -> None:
    report = check_readiness([running(0)], True, STALL, NOW)

    assert not report.ok
    assert report.status == "stopping"
    assert report.problems == ("the pool is stopping",)


def test_readiness_fails_on_exited_worker() -> None:
    report = check_readiness([running(0), exited(1)], False, STALL, NOW)

    assert not report.ok
    assert "has exited" in report.problems[0]


def test_readiness_fails_on_stalled_worker() -> None:
    report = check_readiness([running(0, silent=STALL + 1)], False, STALL, NOW)

    assert not report.ok
    assert "has not reported for 31.0 s" in report.problems[0]


def test_report_json_names_each_worker() -> None:
    report = check_liveness([running(0, silent=2.0), exited(1)], False, STALL, NOW)

    body = json.loads(report.to_json())

    assert body["status"] == "failing"
    assert body["problems"] == list(report.problems)
    assert body["workers"][0] == {
        "worker": 0,
        "pid": 100,
        "state": "running",
        "ready": True,
        "seconds_since_heartbeat": 2.0,
    }
    assert body["workers"][1]["state"] == "exited"


# -- the shared table --------------------------------------------------------------------------


def test_heartbeat_table_records_beats_and_ready() -> None:
    clock = iter([10.0, 12.5, 20.0]).__next__
    table = HeartbeatTable(multiprocessing.get_context("spawn"), 2, clock=clock)

    heartbeat = table.worker(1)  # the start counts as the first beat, at 10.0

    assert table.last_beat(1) == 10.0
    assert not table.ready(1)
    heartbeat.beat()
    heartbeat.set_ready(True)
    assert table.last_beat(1) == 12.5
    assert table.ready(1)
    assert table.last_beat(0) == 0.0
    assert not table.ready(0)


def _beat_in_child(heartbeat: Any) -> None:
    heartbeat.beat()
    heartbeat.set_ready(True)


def test_heartbeat_reaches_parent_from_spawned_process() -> None:
    context = multiprocessing.get_context("spawn")
    table = HeartbeatTable(context, 1)
    heartbeat = table.worker(0)
    before = time.monotonic()

    child = context.Process(target=_beat_in_child, args=(heartbeat,))
    child.start()
    child.join(60)

    assert child.exitcode == 0
    assert table.last_beat(0) >= before
    assert table.ready(0)


# -- HTTP endpoints on the real metrics server -------------------------------------------------


class FakeHealth:
    """A health source whose reports the test sets."""

    def __init__(self) -> None:
        self.live = check_liveness([running(0)], False, STALL, NOW)
        self.ready = check_readiness([running(0, ready=False)], False, STALL, NOW)

    def liveness(self) -> HealthReport:
        return self.live

    def readiness(self) -> HealthReport:
        return self.ready


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    path = prepare_multiprocess_dir(tmp_path)
    yield path
    remove_multiprocess_dir(path)


@pytest.fixture
def served(metrics_dir: Path) -> Iterator[tuple[str, FakeHealth]]:
    health = FakeHealth()
    server, _thread = serve_aggregate("127.0.0.1", 0, health)
    try:
        yield f"http://127.0.0.1:{server.server_port}", health
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def test_healthz_200_when_live(served: tuple[str, FakeHealth]) -> None:
    base, _health = served

    status, content_type, body = _get(f"{base}/healthz")

    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body)["status"] == "ok"


def test_healthz_503_names_stalled_worker(served: tuple[str, FakeHealth]) -> None:
    base, health = served
    health.live = check_liveness([running(0, silent=45.0)], False, STALL, NOW)

    status, _content_type, body = _get(f"{base}/healthz")

    assert status == 503
    problems = json.loads(body)["problems"]
    assert problems[0].startswith("worker 0 (pid 100) has not reported for 45.0 s")


def test_readyz_follows_readiness(served: tuple[str, FakeHealth]) -> None:
    base, health = served

    not_ready, _type, body = _get(f"{base}/readyz")
    health.ready = check_readiness([running(0)], False, STALL, NOW)
    ready, _type, _body = _get(f"{base}/readyz")

    assert not_ready == 503
    assert json.loads(body)["status"] == "not ready"
    assert ready == 200


def test_metrics_unchanged_with_heartbeat_gauge(served: tuple[str, FakeHealth]) -> None:
    base, health = served
    health.live = check_liveness([running(0, silent=4.0), exited(1)], False, STALL, NOW)

    status, content_type, body = _get(f"{base}/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'hiertcn_worker_heartbeat_age_seconds{worker="0"} 4.0' in body
    assert 'worker="1"' not in body
    # The exited worker still counts as configured, so an alert can compare the two gauges.
    assert "\nhiertcn_workers_configured 2.0\n" in body


def test_health_paths_absent_without_health_source(metrics_dir: Path) -> None:
    server, _thread = serve_aggregate("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        status, _content_type, body = _get(f"{base}/metrics")
    finally:
        server.shutdown()
        server.server_close()

    assert status == 200
    assert "hiertcn_worker_heartbeat_age_seconds" not in body
    assert "hiertcn_workers_configured" not in body


@pytest.mark.parametrize("path", ["/", "/ready", "/health", "/livez", "/healthz/", "/metrics/"])
def test_unknown_path_404(served: tuple[str, FakeHealth], path: str) -> None:
    base, _health = served

    status, content_type, body = _get(f"{base}{path}")

    assert status == 404
    assert content_type == "text/plain"
    assert body == f"path {path!r} not found: use /metrics, /healthz or /readyz\n"


def test_health_paths_404_without_health_source(metrics_dir: Path) -> None:
    server, _thread = serve_aggregate("127.0.0.1", 0)
    try:
        status, _content_type, body = _get(f"http://127.0.0.1:{server.server_port}/healthz")
    finally:
        server.shutdown()
        server.server_close()

    assert status == 404
    assert body == "path '/healthz' not found: use /metrics\n"


def test_body_reports_exited_worker_not_ready() -> None:
    report = check_liveness([running(0), exited(1)], False, STALL, NOW)

    workers = json.loads(report.to_json())["workers"]

    assert workers[0]["ready"] is True
    assert workers[1]["state"] == "exited"
    assert workers[1]["ready"] is False
