"""A bundle overwritten in place while a pool serves it stops the pool with exit status 2,
also under --keep-going, with an error line that names the bundle, the file and the fix."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 60
_ASSIGNED = re.compile(r" INFO (\d+) stream\.rebalance: assigned ")
# Seconds from the overwrite until the pool has exited: the check runs at most once a second,
# then the workers stop and leave the group.
EXIT_BOUND_S = 30.0


def wait_for_assignments(run: WorkerRun, processes: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(set(_ASSIGNED.findall(run.log()))) < processes:
        assert run.process.poll() is None, run.log()
        assert time.monotonic() < deadline, f"{processes} workers not assigned\n{run.log()}"
        time.sleep(0.2)


def overwrite_in_place(path: Path) -> None:
    """Rewrite the item table with other values of the same shape, as `cp v2/* live/` does with
    a bundle of the same sizes: the same inode and size, new contents."""
    table = np.load(path)
    with path.open("r+b") as file:
        file.truncate(0)
        np.save(file, (table * 2).astype(table.dtype))


def test_overwritten_bundle_stops_pool(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    live = tmp_path / "bundles" / "live"
    shutil.copytree(stream_bundle, live)
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    run = start_worker(
        kafka_bootstrap,
        live,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        ["--processes", "2", "--keep-going"],
    )
    worker_runs.append(run)
    wait_for_assignments(run, processes=2)
    events = make_events(users=10, count=EVENTS, seed=11)
    produce_events(kafka_bootstrap, topics.input, events)
    assert len(read_topic(kafka_bootstrap, topics.output, EVENTS)) == EVENTS, run.log()

    overwrite_in_place(live / "items.npy")

    assert run.wait(EXIT_BOUND_S) == 2, run.log()
    log = run.log()
    changed = [line for line in log.splitlines() if "items.npy was rewritten in place" in line]
    assert changed, log
    assert f"bundle {live} changed" in changed[0]
    assert "Deploy each bundle to a new directory and restart the pool" in changed[0]
    assert "pool exits with 2" in log
