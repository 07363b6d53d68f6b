"""A worker whose group join completes after a stop request, on a real broker.

The join can complete inside the consumer's close(), where the offset queries of an assignment
can time out. The worker then assigns nothing, and librdkafka must accept both the empty
assignment and the revocation of partitions that were never assigned.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from statestore import StateStore, StoreConfig
from stream.config import WorkerConfig
from stream.kafka_settings import consumer_settings, producer_settings
from stream.metrics import create_metrics
from stream.worker import Worker
from tests.integration.fixtures_stream import Topics, make_topics, wait_for_members

PARTITIONS = 2
# Seconds within which the group must be empty: well below session.timeout.ms (45 s), which a
# member that does not leave stays for.
LEAVE_SECONDS = 10.0


def _worker(bootstrap: str, topics: Topics, state_dir: Path) -> Worker:
    config = WorkerConfig(
        brokers=bootstrap,
        bundle=Path("unused"),
        group_id=topics.group,
        input_topic=topics.input,
        state_dir=state_dir,
    )
    # The pipeline is never reached: nothing is assigned, so nothing is consumed.
    pipeline = SimpleNamespace(config=SimpleNamespace(session_gap=600.0, top_k=10))
    return Worker(
        config,
        pipeline,  # type: ignore[arg-type]
        StateStore(StoreConfig(path=state_dir, sync=False)),
        create_metrics(CollectorRegistry()),
        Consumer(consumer_settings(config)),
        Producer(producer_settings(config)),
        {},
    )


def test_join_after_stop_request_assigns_nothing_and_leaves(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tmp_path: Path
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    worker = _worker(kafka_bootstrap, topics, tmp_path / "state")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        worker.consumer.subscribe(
            [topics.input],
            on_assign=worker._on_assign,
            on_revoke=worker._on_revoke,
            on_lost=worker._on_lost,
        )
        worker.request_stop(signal.SIGTERM)
        # 1. The join completes while the stop request is pending.
        deadline = time.monotonic() + 60
        while worker._never_assigned != set(range(PARTITIONS)):
            assert time.monotonic() < deadline, "the group never assigned the partitions"
            worker.consumer.poll(0.2)
        assert worker.consumer.assignment() == []

        # 2. The stop: close() revokes the partitions that were never assigned.
        worker._shutdown()

        assert worker._never_assigned == set()
        members = wait_for_members(admin, topics.group, 0, LEAVE_SECONDS)
        assert members == 0, f"the stopped worker still belongs to group {topics.group}"
    finally:
        worker.store.close()

    # 3. The partitions go to the group's next member, which gets them without delay.
    config = WorkerConfig(brokers=kafka_bootstrap, bundle=Path("unused"), group_id=topics.group)
    successor = Consumer(consumer_settings(config))
    try:
        successor.subscribe([topics.input])
        deadline = time.monotonic() + 30
        while len(successor.assignment()) < PARTITIONS:
            assert time.monotonic() < deadline, "the next member never got the partitions"
            successor.poll(0.2)
    finally:
        successor.close()
