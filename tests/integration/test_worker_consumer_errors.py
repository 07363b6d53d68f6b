"""A consumer error that the broker repeats on every retry stops the worker with exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.fixtures_stream import (
    WorkerRun,
    make_topics,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

# Above the broker's default group.max.session.timeout.ms (30 minutes) and within librdkafka's
# own range, so only the group coordinator rejects it (INVALID_SESSION_TIMEOUT).
SESSION_TIMEOUT_MS = 3_600_000


def test_session_timeout_above_broker_max(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        extra=[
            "-X",
            f"session.timeout.ms={SESSION_TIMEOUT_MS}",
            # librdkafka requires max.poll.interval.ms >= session.timeout.ms.
            "-X",
            f"max.poll.interval.ms={SESSION_TIMEOUT_MS}",
        ],
    )
    worker_runs.append(run)

    assert run.wait(90) == 2, run.log()
    log = run.log()
    assert "INVALID_SESSION_TIMEOUT" in log, log
    assert "set -X session.timeout.ms within the broker's" in log, log
    assert "Traceback" not in log, log
