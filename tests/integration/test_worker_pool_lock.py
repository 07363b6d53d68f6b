"""Pools on one state directory: another consumer group is rejected, the same group may join.

Each pool holds `pool.lock` in its state directory (`statestore.pool_lock.lock_pool`). A pool of
another group would apply every event a second time to the same user states, so it exits 2
before it starts a worker. A pool of the same group is a rolling restart and runs beside it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ops.prometheus.run import free_port
from tests.integration.fixtures_stream import (
    Topics,
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 20
READY_TIMEOUT_S = 30.0
_STARTED = re.compile(r"started worker 0 \(pid (\d+)\)")


def _start_pool(
    bootstrap: str, bundle: Path, topics: Topics, state_dir: Path, log_path: Path
) -> tuple[WorkerRun, str]:
    """Start a pool of one worker with its metrics server, and return it with its /readyz URL."""
    port = free_port()
    extra = ["--processes", "1", "--metrics-port", str(port)]
    run = start_worker(bootstrap, bundle, topics, state_dir, log_path, extra)
    return run, f"http://127.0.0.1:{port}/readyz"


def _wait_until_ready(run: WorkerRun, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll the pool's /readyz until it returns 200, failing when the pool exits first."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        assert run.process.poll() is None, run.log()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = (error.code, json.loads(error.read()))
        except (urllib.error.URLError, ConnectionError) as error:
            last = error  # the metrics server is not listening yet
        time.sleep(0.2)
    raise AssertionError(f"{url} did not return 200 in {timeout_s} s: {last}\n{run.log()}")


def test_other_group_rejected_same_group_joins(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    other_group = dataclasses.replace(topics, group=unique_topic("other-group"))
    state_dir = tmp_path / "state"

    first, first_ready = _start_pool(
        kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "first.log"
    )
    worker_runs.append(first)
    _wait_until_ready(first, first_ready)

    # A pool of another group on the same directory stops before it starts a worker.
    rejected, _url = _start_pool(
        kafka_bootstrap, stream_bundle, other_group, state_dir, tmp_path / "rejected.log"
    )
    worker_runs.append(rejected)
    assert rejected.wait(30) == 2, rejected.log()
    log = rejected.log()
    holder = f"consumer group {topics.group!r} (pid {first.process.pid})"
    assert f"state directory {state_dir} is in use by a worker pool of {holder}" in log
    assert f"this pool of group {other_group.group!r}" in log
    assert "Run one pool per state directory and raise --processes for more workers" in log
    assert "pass another --state-dir, or stop that pool first" in log
    assert "started worker" not in log

    # The first pool keeps serving: it produces an output for every new event.
    produce_events(kafka_bootstrap, topics.input, make_events(users=4, count=EVENTS, seed=3))
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=20.0, settle_s=0.5)
    assert len(outputs) == EVENTS, first.log()
    started = _STARTED.search(first.log())
    assert started is not None, first.log()
    worker_pid = started.group(1).encode()
    assert {output.headers["hiertcn.worker"] for output in outputs} == {worker_pid}
    assert first.process.poll() is None, first.log()

    # A pool of the first pool's group joins it, as in a rolling restart.
    beside, beside_ready = _start_pool(
        kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "beside.log"
    )
    worker_runs.append(beside)
    _wait_until_ready(beside, beside_ready)
    assert "is in use" not in beside.log()
    assert first.process.poll() is None, first.log()

    beside.signal(signal.SIGTERM)
    first.signal(signal.SIGTERM)
    assert beside.wait() == 0, beside.log()
    assert first.wait() == 0, first.log()
