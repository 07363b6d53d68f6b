"""A worker whose group join completes after a stop request, on a real broker, and pools stopped
at several moments around their join.

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
from tests.integration.fixtures_stream import (
    Topics,
    WorkerRun,
    make_topics,
    start_worker,
    stream_bundle,  # noqa: F401 - pytest fixture
    wait_for_log,
    wait_for_members,
    worker_runs,  # noqa: F401 - pytest fixture
)

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


def test_join_after_stop_assigns_nothing(
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


# Seconds after a pool's worker logged "started on" at which it gets SIGTERM: before, during
# and after its group join, which takes a rebalance of the busy member.
STOP_DELAYS = (0.0, 0.2, 0.6, 1.5)


def test_pool_stopped_around_join_leaves(
    kafka_bootstrap: str,
    unique_topic: Callable[[str], str],
    stream_bundle: Path,  # noqa: F811
    worker_runs: list[WorkerRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    topics = make_topics(kafka_bootstrap, unique_topic, partitions=PARTITIONS)
    busy = start_worker(
        kafka_bootstrap, stream_bundle, topics, tmp_path / "busy", tmp_path / "busy.log"
    )
    worker_runs.append(busy)
    wait_for_log(busy, "stream.rebalance: assigned ", timeout_s=60)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    for number, delay in enumerate(STOP_DELAYS):
        log_path = tmp_path / f"joining{number}.log"
        joining = start_worker(
            kafka_bootstrap, stream_bundle, topics, tmp_path / f"joining{number}", log_path
        )
        worker_runs.append(joining)
        wait_for_log(joining, ") started on ", timeout_s=60)
        time.sleep(delay)
        joining.signal(signal.SIGTERM)

        assert joining.wait(60) == 0, joining.log()
        # A member that did not leave would stay until session.timeout.ms (45 s).
        members = wait_for_members(admin, topics.group, 1, LEAVE_SECONDS)
        assert members == 1, f"delay {delay} s:\n{joining.log()}"

    busy.signal(signal.SIGTERM)
    assert busy.wait(60) == 0, busy.log()
