"""A pool whose parent process is killed: its workers commit, leave the group and exit.

Without a parent, nothing serves the workers' metrics or stops them, so each worker stops as on
SIGTERM once it notices the exit. Until the last one has exited, the workers hold `pool.lock`
and keep a pool of another consumer group out of the state directory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient

from statestore.pool_lock import lock_pool
from tests.integration.fixtures_stream import (
    WorkerRun,
    committed_offsets,
    make_events,
    make_topics,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_members,
    worker_runs,  # noqa: F401 - pytest fixture
)
from tests.stream.test_pool_orphans import wait_until_exited

EVENTS = 40
PARTITIONS = 2
# Seconds within which both orphaned workers must have exited.
ORPHAN_EXIT_S = 15.0
_STARTED = re.compile(r"started worker \d \(pid (\d+)\)")


# Seconds within which the group must be empty: the coordinator handles the two LeaveGroup
# requests one after the other, well below session.timeout.ms (45 s), which a worker that
# did not leave would need.
GROUP_EMPTY_S = 15.0


def _wait_until_assigned(pool: WorkerRun, workers: list[int], timeout_s: float) -> None:
    """Wait until each worker pid in `workers` has logged a partition assignment.

    A worker stopped while its group join is still in flight leaves a member that the broker
    drops only after session.timeout.ms, so the tests that count members wait for the join.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        log = pool.log()
        if all(f" {pid} stream.rebalance: assigned " in log for pid in workers):
            return
        assert time.monotonic() < deadline, log
        time.sleep(0.1)


def test_orphaned_workers_commit_leave_and_exit(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    state_dir = tmp_path / "state"
    pool = start_worker(
        kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "pool.log",
        ["--processes", "2"],
    )  # fmt: skip
    worker_runs.append(pool)
    produce_events(kafka_bootstrap, topics.input, make_events(users=6, count=EVENTS, seed=5))
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=90, settle_s=0.5)
    assert len(outputs) == EVENTS, pool.log()
    workers = [int(pid) for pid in _STARTED.findall(pool.log())]
    assert len(workers) == 2, pool.log()
    _wait_until_assigned(pool, workers, timeout_s=60)

    # Only the parent: the workers are re-parented, as after an OOM kill of the parent.
    pool.process.kill()
    pool.process.wait(10)

    assert wait_until_exited(workers, ORPHAN_EXIT_S) == [], pool.log()
    log = pool.log()
    assert log.count(f"its pool process (pid {pool.process.pid}) has exited") == 2, log
    assert "Traceback" not in log

    # They committed every event they processed, and left the group instead of waiting for
    # session.timeout.ms.
    offsets = committed_offsets(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    assert sum(offsets) == EVENTS, log
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert wait_for_members(admin, topics.group, 0, GROUP_EMPTY_S) == 0, log

    other = lock_pool(state_dir, "another-group")
    assert other is not None
    os.close(other)


# Events of a backlog that keeps both workers busy when the pool's parent is killed.
BACKLOG_EVENTS = 20_000


def test_busy_orphans_each_name_pool_exit_once(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    # A busy worker handles the parent-death signal at once, while the killed pool's other
    # threads may still be exiting and getppid() still returns the pool's pid.
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    pool = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "pool.log",
        ["--processes", "2"],
    )  # fmt: skip
    worker_runs.append(pool)
    produce_events(kafka_bootstrap, topics.input, make_events(users=50, count=BACKLOG_EVENTS))
    read_topic(kafka_bootstrap, topics.output, 200, timeout_s=90, settle_s=0.0)
    workers = [int(pid) for pid in _STARTED.findall(pool.log())]
    assert len(workers) == 2, pool.log()

    pool.process.kill()
    pool.process.wait(10)

    assert wait_until_exited(workers, ORPHAN_EXIT_S) == [], pool.log()
    log = pool.log()
    for index, pid in enumerate(workers):
        worker = f"worker {index} (pid {pid})"
        assert log.count(f"{worker}: its pool process (pid {pool.process.pid}) has exited") == 1
        assert f"{worker} received SIGTERM" not in log
        assert f"{worker} stopped" in log
    assert "Traceback" not in log
