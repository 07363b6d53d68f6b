"""The worker on the real broker: one output per event, equal to what replay produces."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from tests.integration.fixtures_stream import (
    TOP_K,
    WorkerRun,
    assert_same_recommendation,
    committed_offsets,
    make_events,
    make_topics,
    outputs_by_user,
    produce_events,
    read_topic,
    replay_outputs,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 600


def test_worker_matches_replay(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=40, count=EVENTS, seed=1)
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=3)
    produce_events(kafka_bootstrap, topics.input, events)

    run = start_worker(
        kafka_bootstrap,
        stream_bundle,
        topics,
        tmp_path / "state",
        tmp_path / "worker.log",
        ["--max-batch-size", "32"],
    )
    worker_runs.append(run)
    outputs = read_topic(kafka_bootstrap, topics.output, EVENTS, settle_s=1.0)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    assert len(outputs) == EVENTS, run.log()
    reference = replay_outputs(stream_bundle, events)
    expected_by_user: dict[str, list[dict]] = {}
    for output in reference:
        expected_by_user.setdefault(output["user"], []).append(output)
    produced_by_user = outputs_by_user(outputs)
    assert produced_by_user.keys() == expected_by_user.keys()
    for user, expected in expected_by_user.items():
        produced = [output.value for output in produced_by_user[user]]
        assert [o["event_id"] for o in produced] == [o["event_id"] for o in expected], user
        for worker_output, replay_output in zip(produced, expected, strict=True):
            assert_same_recommendation(worker_output, replay_output)
            assert len(worker_output["items"]) == TOP_K

    for output in outputs:
        assert output.key == output.value["user"]
        assert output.headers["hiertcn.worker"].isdigit()


def test_worker_commits_offsets_to_kafka(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=10, count=120, seed=2)
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=2)
    produce_events(kafka_bootstrap, topics.input, events)

    run = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "worker.log"
    )
    worker_runs.append(run)
    outputs = read_topic(kafka_bootstrap, topics.output, len(events))
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.log()

    assert len(outputs) == len(events)
    per_partition = [0] * topics.partitions
    for output in outputs:
        per_partition[output.partition] += 1
    # Input and output partitions match here because both topics hash the same user keys.
    committed = committed_offsets(kafka_bootstrap, topics.group, topics.input, topics.partitions)
    assert committed == per_partition
