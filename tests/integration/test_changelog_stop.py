"""Changelog restores on a real broker: a stop request during the restores, and a restore whose
position lies behind the group's committed offset because a member ran without the changelog.

Each "host" is a `hiertcn-stream run` pool with a state directory of its own, as in
test_changelog_handover.py.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ops.kafka.admin import wait_for_leaders
from statestore import PartitionPosition, UserState
from stream.changelog import CHANGELOG_TOPIC_CONFIG, changelog_records
from tests.integration.fixtures_stream import (
    START_TS,
    TINY_CONFIG,
    Topics,
    WorkerRun,
    committed_offsets,
    make_events,
    make_topics,
    output_watcher,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_log,
    wait_for_messages,
    worker_runs,  # noqa: F401 - pytest fixture
)

PARTITIONS = 3
# Changelog records of partition 0 before its position: enough to keep its restore busy for
# about a second or more on a 2-core machine, so that the stop request arrives during it.
FILLER_RECORDS = 150_000
FILLER_USERS = 100
# Seconds a worker may take to stop after SIGTERM once the restores end at the request.
STOP_SECONDS = 30.0


def _high_watermarks(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for partition in range(PARTITIONS)
        ]
    finally:
        consumer.close()


def _commit(bootstrap: str, group: str, topic: str, offsets: list[int]) -> None:
    """Commit `offsets` for `group`, as a pool that processed those events would have."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p, offset) for p, offset in enumerate(offsets)]
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()


def _tiny_state(partition: int) -> UserState:
    """A state with the shapes of the test bundle and no open session."""
    hidden = np.zeros((TINY_CONFIG.gru_layers, TINY_CONFIG.hidden_size), dtype=np.float32)
    state = UserState.new(hidden, TINY_CONFIG.embedding_dim, partition=partition)
    state.last_ts = START_TS
    return state


def _fill_changelog(bootstrap: str, topics: Topics, changelog: str, highs: list[int]) -> None:
    """Write a changelog whose positions are the input topic's ends; partition 0 gets
    FILLER_RECORDS states first."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new_topic = NewTopic(changelog, PARTITIONS, 1, config=dict(CHANGELOG_TOPIC_CONFIG))
    admin.create_topics([new_topic])[changelog].result(30)
    wait_for_leaders(admin, [changelog], 30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    filler = changelog_records(
        changelog, topics.input, {f"filler{n}": _tiny_state(0) for n in range(FILLER_USERS)}, {}
    )
    records = [filler[n % FILLER_USERS] for n in range(FILLER_RECORDS)]
    positions = {p: PartitionPosition(high, START_TS) for p, high in enumerate(highs)}
    records += changelog_records(changelog, topics.input, {}, positions)
    for record in records:
        while True:
            try:
                producer.produce(
                    record.topic, value=record.value, key=record.key, partition=record.partition
                )
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def test_stop_during_restore_leaves_partitions_unassigned(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    events = make_events(users=12, count=90, seed=3)
    # The group has processed the first 60 events: a partition that started at the earliest
    # offset would publish their outputs again.
    produce_events(kafka_bootstrap, topics.input, events[:60])
    highs = _high_watermarks(kafka_bootstrap, topics.input)
    _commit(kafka_bootstrap, topics.group, topics.input, highs)
    _fill_changelog(kafka_bootstrap, topics, changelog, highs)
    state_dir = tmp_path / "host" / "state"
    extra = ["--changelog-topic", changelog, "--processes", "1"]

    run = start_worker(
        kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "stopped.log", extra
    )
    worker_runs.append(run)
    wait_for_log(run, f"restoring {topics.input}[0] from changelog {changelog}")
    run.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert run.wait(STOP_SECONDS) == 0, run.log()
    stop_seconds = time.monotonic() - signalled

    log = run.log()
    assert f"stop requested: the restore of {topics.input}[0] from changelog" in log, log
    assert (
        f"stop requested during the changelog restores: {topics.input}[0], {topics.input}[1], "
        f"{topics.input}[2] left unrestored and not assigned"
    ) in log, log
    assert f"restored {topics.input}[" not in log, log
    assert f"assigned {topics.input}[" not in log, log
    assert "starting at the earliest offset" not in log, log
    assert "left unrestored here, so its next owner restores it" in log, log
    assert stop_seconds < STOP_SECONDS
    assert read_topic(kafka_bootstrap, topics.output, 1, timeout_s=3) == []

    # The next start restores every partition, the interrupted one included, and serves only
    # the events after the changelog's positions.
    with output_watcher(kafka_bootstrap, topics.output, PARTITIONS) as watcher:
        run = start_worker(
            kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / "again.log", extra
        )
        worker_runs.append(run)
        produce_events(kafka_bootstrap, topics.input, events[60:])
        wait_for_messages(watcher, len(events) - 60, timeout_s=120)
        run.signal(signal.SIGTERM)
        assert run.wait() == 0, run.log()

    log = run.log()
    for partition in range(PARTITIONS):
        restored = f"restored {topics.input}[{partition}]@{highs[partition]} from changelog"
        assert restored in log, log
    outputs = read_topic(kafka_bootstrap, topics.output, len(events), timeout_s=10, settle_s=1.0)
    expected_ids = sorted(event["event_id"] for event in events[60:])
    assert sorted(output.value["event_id"] for output in outputs) == expected_ids


def test_member_without_changelog_warned_at_restore(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    events = make_events(users=24, count=300, seed=9)
    # Host A serves the first part with the changelog, then the second part without it. Host B
    # then restores from the changelog, whose positions lack the second part.
    phases = ((0, 150, True), (150, 240, False))
    topics = make_topics(kafka_bootstrap, unique_topic, PARTITIONS)
    changelog = unique_topic("changelog")
    with_changelog = ["--changelog-topic", changelog, "--create-topics", "--partitions", "3"]
    host_a = tmp_path / "host-a" / "state"

    with output_watcher(kafka_bootstrap, topics.output, PARTITIONS) as watcher:

        def serve(state_dir: Path, log_name: str, extra: list[str], outputs: int) -> str:
            run = start_worker(
                kafka_bootstrap, stream_bundle, topics, state_dir, tmp_path / log_name, extra
            )
            worker_runs.append(run)
            wait_for_messages(watcher, outputs, timeout_s=120)
            run.signal(signal.SIGTERM)
            assert run.wait() == 0, run.log()
            return run.log()

        for start, end, uses_changelog in phases:
            produce_events(kafka_bootstrap, topics.input, events[start:end])
            extra = with_changelog if uses_changelog else []
            serve(host_a, f"a-{start}.log", extra, end - start)
            if uses_changelog:
                # The changelog's positions: host A commits them with its last batches.
                restored = committed_offsets(
                    kafka_bootstrap, topics.group, topics.input, PARTITIONS
                )
        committed = committed_offsets(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
        produce_events(kafka_bootstrap, topics.input, events[240:])
        # Host B publishes the outputs of the events after 240, and those of the second phase
        # again.
        log_b = serve(tmp_path / "host-b" / "state", "b.log", with_changelog, 60 + 90)

    moved = [p for p in range(PARTITIONS) if committed[p] > restored[p]]
    assert moved, "the second phase advanced no partition"
    for partition in moved:
        assert (
            f"{topics.input}[{partition}] starts at offset {restored[partition]}, the position "
            f"restored from changelog {changelog}, but group {topics.group} has committed offset "
            f"{committed[partition]}: its {committed[partition] - restored[partition]} events "
            "in between are processed again"
        ) in log_b, log_b
    assert log_b.count(f"Run every member of the group with --changelog-topic {changelog}.") == (
        len(moved)
    )
    assert "an older copy of the state directory" not in log_b

    # The events of the phase without the changelog got two outputs each, the others one.
    outputs = read_topic(kafka_bootstrap, topics.output, 390, timeout_s=30, settle_s=1.0)
    counts = Counter(output.value["event_id"] for output in outputs)
    assert {event_id for event_id, count in counts.items() if count == 2} == {
        event["event_id"] for event in events[150:240]
    }
    assert set(counts.values()) == {1, 2}
    assert len(counts) == len(events)
