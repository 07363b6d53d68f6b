"""/healthz and /readyz of a real pool on the broker: ready after joining, failing when stalled."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ops.prometheus.run import free_port
from tests.integration.fixtures_stream import (
    WorkerRun,
    make_topics,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

STALL_SECONDS = 4.0
_STARTED = re.compile(r"started worker 0 \(pid (\d+)\)")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_for_status(run: WorkerRun, url: str, expected: int, timeout_s: float) -> dict:
    """Poll `url` until it returns `expected`; return the JSON body of that response."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, dict] | None = None
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.log()
        try:
            last = _get(url)
        except (urllib.error.URLError, ConnectionError):
            last = None  # the server is not listening yet
        if last is not None and last[0] == expected:
            return last[1]
        time.sleep(0.2)
    raise AssertionError(f"{url} did not return {expected} in {timeout_s} s: {last}\n{run.log()}")


def test_healthz_fails_while_worker_stopped(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    port = free_port()
    extra = ["--processes", "1", "--metrics-port", str(port)]
    extra += ["--health-stall-seconds", str(STALL_SECONDS)]
    run = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "pool.log", extra
    )
    worker_runs.append(run)
    base = f"http://127.0.0.1:{port}"

    ready = _wait_for_status(run, f"{base}/readyz", 200, timeout_s=45.0)
    assert ready["status"] == "ok"
    status, live = _get(f"{base}/healthz")
    assert status == 200, live
    match = _STARTED.search(run.log())
    assert match is not None, run.log()
    worker_pid = int(match.group(1))

    os.kill(worker_pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        failing = _wait_for_status(run, f"{base}/healthz", 503, timeout_s=STALL_SECONDS + 10)
        waited = time.monotonic() - stopped_at
        not_ready, _body = _get(f"{base}/readyz")
    finally:
        os.kill(worker_pid, signal.SIGCONT)

    # The last heartbeat came at most one idle poll (0.2 s) and a scheduling delay before the stop.
    assert waited >= STALL_SECONDS - 1.0
    assert failing["status"] == "failing"
    assert failing["problems"][0].startswith(f"worker 0 (pid {worker_pid}) has not reported for")
    assert not_ready == 503
    _wait_for_status(run, f"{base}/healthz", 200, timeout_s=15.0)

    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()


def test_readyz_with_more_workers_than_partitions(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    port = free_port()
    extra = ["--processes", "2", "--metrics-port", str(port)]
    run = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "pool.log", extra
    )
    worker_runs.append(run)

    # One worker gets the partition and the other an empty assignment, which counts as joined.
    ready = _wait_for_status(run, f"http://127.0.0.1:{port}/readyz", 200, timeout_s=45.0)

    assert [worker["ready"] for worker in ready["workers"]] == [True, True]
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()
