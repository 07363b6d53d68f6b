"""Stop signals sent to a running `hiertcn-stream run` pool on a real broker.

A terminal's Ctrl-C sends SIGINT to the whole process group: the pool and every worker. The
first one stops the pool gracefully. A second one either comes after the workers have finished
their stop, and changes nothing, or kills the workers still stopping, and the pool exits 130.
Neither case may log an error or a traceback, or let a signal's default action end a process.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_log,
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 40
PARTITIONS = 2
# Seconds within which a pool started with two workers has logged both "started on" lines.
START_TIMEOUT_S = 90.0
# Lines that no stop by signal may log.
FAILURE_MARKERS = ("ERROR", "Traceback", "KeyboardInterrupt", "Exception ignored")


def _serving_pool(
    bootstrap: str,
    unique_topic: Callable[[str], str],
    bundle: Path,
    tmp_path: Path,
    runs: list[WorkerRun],
) -> WorkerRun:
    """Start a pool of two workers and return it once it has served a few events."""
    topics = make_topics(bootstrap, unique_topic, partitions=PARTITIONS)
    pool = start_worker(
        bootstrap, bundle, topics, tmp_path / "state", tmp_path / "pool.log",
        ["--processes", "2"],
    )  # fmt: skip
    runs.append(pool)
    produce_events(bootstrap, topics.input, make_events(users=6, count=EVENTS, seed=3))
    outputs = read_topic(bootstrap, topics.output, EVENTS, timeout_s=90, settle_s=0.2)
    assert len(outputs) == EVENTS, pool.log()
    wait_for_log(pool, lambda log: log.count(") started on ") == 2, START_TIMEOUT_S)
    return pool


def _assert_no_failure(log: str) -> None:
    for line in log.splitlines():
        for marker in FAILURE_MARKERS:
            assert marker not in line, log


def _assert_stopped(pool: WorkerRun, code: int, second: str, first: str | None = None) -> None:
    """Check the exit of a pool that got the stop signal `first` (None: the same as `second`)
    and then `second` (SIGINT, SIGTERM)."""
    log = pool.log()
    _assert_no_failure(log)
    assert log.count("stopping the pool (") == 1, log
    assert code in (0, 128 + signal.Signals[second]), log
    if code == 0:
        assert "pool exits with 0: every worker stopped on request" in log
        assert "killing" not in log
        assert len(re.findall(r"stream\.pool: worker \d \(pid \d+\) stopped", log)) == 2, log
    else:
        cause = "received again" if first in (None, second) else f"received after {first}"
        assert f"{second} {cause} while the pool stops: killing " in log
        assert f"pool exits with {code}: {second} {cause}, workers killed" in log


@pytest.mark.parametrize("gap_s", [0.0, 0.02, 0.1, 0.3])
def test_two_sigints_to_process_group(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
    gap_s: float,
) -> None:
    pool = _serving_pool(kafka_bootstrap, unique_topic, stream_bundle, tmp_path, worker_runs)

    os.killpg(pool.process.pid, signal.SIGINT)
    time.sleep(gap_s)
    os.killpg(pool.process.pid, signal.SIGINT)
    code = pool.wait(120)

    _assert_stopped(pool, code, "SIGINT")


def test_sigterm_then_sigint(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    # A supervisor's SIGTERM to the pool, then the operator's Ctrl-C in its terminal.
    pool = _serving_pool(kafka_bootstrap, unique_topic, stream_bundle, tmp_path, worker_runs)

    pool.signal(signal.SIGTERM)
    time.sleep(0.02)
    os.killpg(pool.process.pid, signal.SIGINT)
    code = pool.wait(120)

    _assert_stopped(pool, code, "SIGINT", first="SIGTERM")
    assert "stopping the pool (SIGTERM received)" in pool.log()


def test_sigint_while_workers_start(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    # The workers still import their modules and load the bundle, before their handlers exist.
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    pool = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "pool.log",
        ["--processes", "2"],
    )  # fmt: skip
    worker_runs.append(pool)
    wait_for_log(pool, "started worker 1 (pid", START_TIMEOUT_S)

    os.killpg(pool.process.pid, signal.SIGINT)
    code = pool.wait(120)

    log = pool.log()
    assert code == 0, log
    _assert_no_failure(log)
    assert "pool exits with 0: every worker stopped on request" in log
    assert log.count("stopping before it joined the group") == 2, log
