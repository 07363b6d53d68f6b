"""The reader of the partition count gauge, which runs in a thread of its own."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from stream.metric_updates import PARTITION_COUNT_TIMEOUT_SECONDS, PartitionCountReader
from stream.metrics import create_metrics


def _metadata(topic: str, partitions: int, error: Any = None) -> Any:
    described = SimpleNamespace(partitions=dict.fromkeys(range(partitions)), error=error)
    return SimpleNamespace(topics={topic: described})


class MetadataConsumer:
    """A consumer whose list_topics returns `partitions` for every topic, or raises `error`."""

    def __init__(self, partitions: int, error: KafkaException | None = None) -> None:
        self.partitions = partitions
        self.error = error
        self.requests: list[tuple[str, float]] = []
        self.requested = threading.Event()

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.requests.append((topic, timeout))
        self.requested.set()
        if self.error is not None:
            raise self.error
        return _metadata(topic, self.partitions)


def _reader(consumer: Any, seconds: float = 60.0) -> PartitionCountReader:
    gauge = create_metrics(CollectorRegistry()).input_partitions
    return PartitionCountReader(consumer, "interactions", gauge, seconds)


def test_read_sets_partition_count() -> None:
    consumer = MetadataConsumer(partitions=6)
    reader = _reader(consumer)

    reader.read()

    assert reader.gauge._value.get() == 6
    assert consumer.requests == [("interactions", PARTITION_COUNT_TIMEOUT_SECONDS)]


def test_read_keeps_value_on_metadata_error() -> None:
    consumer = MetadataConsumer(0, KafkaException(KafkaError(KafkaError._TRANSPORT)))
    reader = _reader(consumer)
    reader.gauge.set(4)

    reader.read()

    assert reader.gauge._value.get() == 4


def test_read_keeps_value_for_unknown_topic() -> None:
    unknown = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
    consumer = SimpleNamespace(list_topics=lambda topic, timeout: _metadata(topic, 0, unknown))
    reader = _reader(consumer)
    reader.gauge.set(4)

    reader.read()

    assert reader.gauge._value.get() == 4


def test_thread_reads_at_start_then_each_interval() -> None:
    consumer = MetadataConsumer(partitions=2)
    reader = _reader(consumer, seconds=0.05)

    reader.start()
    try:
        assert consumer.requested.wait(5)
        deadline = time.monotonic() + 5
        while len(consumer.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.stop()

    assert len(consumer.requests) >= 3
    assert reader.gauge._value.get() == 2
    stopped_at = len(consumer.requests)
    time.sleep(0.2)
    assert len(consumer.requests) == stopped_at


def test_stop_without_start_returns() -> None:
    reader = _reader(MetadataConsumer(partitions=1))

    started = time.monotonic()
    reader.stop()

    assert time.monotonic() - started < 1.0
