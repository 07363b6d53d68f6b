"""A worker whose state directory has no positions for partitions that its group has processed."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

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

EVENTS = 20


def test_empty_state_dir_after_commits_rejected(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    produce_events(kafka_bootstrap, topics.input, make_events(users=4, count=EVENTS, seed=6))
    first = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "first", tmp_path / "first.log"
    )
    worker_runs.append(first)
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, settle_s=1.0)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.log()
    assert len(outputs) == EVENTS, first.log()

    fresh = tmp_path / "fresh"
    second = start_worker(kafka_bootstrap, stream_bundle, topics, fresh, tmp_path / "second.log")
    worker_runs.append(second)

    assert second.wait(90) != 0, second.log()
    log = second.log()
    assert f"state dir {fresh.resolve()} has no position for" in log
    assert f"consumer group {topics.group} has committed offsets" in log
    assert "--rebuild-state" in log
    again = read_topic(kafka_bootstrap, topics.output, EVENTS + 1, timeout_s=5.0)
    assert len(again) == EVENTS, log
