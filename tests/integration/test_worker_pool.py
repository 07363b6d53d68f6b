"""Two worker processes in one consumer group split the partitions between them."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    outputs_by_user,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 800
PARTITIONS = 4
_ASSIGNED = re.compile(r" INFO (\d+) stream\.rebalance: assigned ")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_assignments(run: WorkerRun, processes: int, timeout_s: float = 60.0) -> None:
    """Wait until `processes` distinct worker processes have logged a partition assignment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(set(_ASSIGNED.findall(run.log()))) >= processes:
            return
        assert run.process.poll() is None, run.log()
        time.sleep(0.2)
    raise AssertionError(
        f"{processes} workers did not get partitions in {timeout_s} s\n{run.log()}"
    )


def _metric_sum(text: str, name: str) -> float:
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
    assert values, f"{name} not in /metrics"
    return sum(float(value) for value in values)


def test_two_processes_split_partitions(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=40, count=EVENTS, seed=6)
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    port = _free_port()
    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        ["--processes", "2", "--max-batch-size", "16", "--metrics-port", str(port)],
    )
    worker_runs.append(run)
    _wait_for_assignments(run, processes=2)

    produce_events(kafka_bootstrap, topics.input, events)
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, settle_s=1.0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    assert len(outputs) == EVENTS, run.log()
    assert {o.value["event_id"] for o in outputs} == {e["event_id"] for e in events}
    pids = {o.headers["hiertcn.worker"] for o in outputs}
    assert len(pids) == 2, "both processes should have produced outputs"
    for user, produced in outputs_by_user(outputs).items():
        runs = [produced[0].headers["hiertcn.worker"]]
        for output in produced[1:]:
            if output.headers["hiertcn.worker"] != runs[-1]:
                runs.append(output.headers["hiertcn.worker"])
        # A user may move to the other process once in a rebalance, but never back and forth.
        assert len(runs) == len(set(runs)), f"{user}'s outputs alternate between processes"

    assert _metric_sum(metrics, "hiertcn_events_consumed_total") == EVENTS
    assert _metric_sum(metrics, "hiertcn_partitions_assigned") == PARTITIONS
    assert _metric_sum(metrics, "hiertcn_workers_running") == 2
    assert _metric_sum(metrics, "hiertcn_consumer_lag_messages") == 0
