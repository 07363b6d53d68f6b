"""A pool stopped with SIGTERM leaves its consumer group at once, idle workers included."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from stream.config import WorkerConfig
from stream.kafka_settings import close_consumer, consumer_settings
from tests.integration.fixtures_stream import (
    WorkerRun,
    make_events,
    make_topics,
    produce_events,
    read_topic,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_members,
    worker_runs,  # noqa: F401 - pytest fixture
)

EVENTS = 20


def test_idle_worker_leaves_group_on_sigterm(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    # One partition in the group: the first pool owns it, and the second pool's worker is idle.
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    produce_events(kafka_bootstrap, topics.input, make_events(users=3, count=EVENTS, seed=4))
    busy = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "busy.log"
    )
    worker_runs.append(busy)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert len(read_topic(kafka_bootstrap, topics.output, EVENTS, timeout_s=90)) == EVENTS
    idle = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "state", tmp_path / "idle.log"
    )
    worker_runs.append(idle)
    assert wait_for_members(admin, topics.group, 2, timeout_s=60) == 2

    idle.signal(signal.SIGTERM)
    assert idle.wait(60) == 0, idle.log()

    assert wait_for_members(admin, topics.group, 1, timeout_s=10) == 1, idle.log()
    assert "assigned " not in idle.log()  # the stopped worker was the idle one
    busy.signal(signal.SIGTERM)
    assert busy.wait(60) == 0, busy.log()


def test_close_consumer_leaves_without_partitions(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    # Two members with the worker's settings on one partition: close the idle one first.
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=1)
    config = WorkerConfig(
        brokers=kafka_bootstrap,
        bundle=tmp_path,
        group_id=topics.group,
        input_topic=topics.input,
        processes=2,
    )
    consumers = [Consumer(consumer_settings(config, index)) for index in range(2)]
    for consumer in consumers:
        consumer.subscribe([topics.input])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    deadline = time.monotonic() + 60
    while sum(len(consumer.assignment()) for consumer in consumers) < 1:
        assert time.monotonic() < deadline, "no member got the partition"
        for consumer in consumers:
            consumer.poll(0.2)
    assert wait_for_members(admin, topics.group, 2, timeout_s=30) == 2
    idle, busy = sorted(consumers, key=lambda consumer: len(consumer.assignment()))

    close_consumer(idle, static_member=False)

    try:
        members = wait_for_members(admin, topics.group, 1, 10, between=lambda: busy.poll(0.2))
        assert members == 1
    finally:
        busy.close()
