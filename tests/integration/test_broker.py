"""The Kafka broker of the test session: topics, produce and consume."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ops.kafka.admin import create_topics
from tests.integration.conftest import docker_engine_answers, start_docker_kafka

MESSAGES = [(f"user-{i % 3}", f"event-{i}") for i in range(9)]


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list:
    """Read `count` messages of `topic` from the beginning, failing after `timeout_s` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, f"consumer error: {message.error()}"
            messages.append(message)
    finally:
        consumer.close()
    return messages


def produce(bootstrap: str, topic: str, pairs: list[tuple[str, str]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in pairs:
        producer.produce(topic, key=key.encode(), value=value.encode())
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered within 30 s"


def test_round_trip_keeps_every_message(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("round-trip")
    create_topics(kafka_bootstrap, [topic], partitions=3)

    produce(kafka_bootstrap, topic, MESSAGES)
    received = consume(kafka_bootstrap, topic, len(MESSAGES))

    pairs = sorted((m.key().decode(), m.value().decode()) for m in received)
    assert pairs == sorted(MESSAGES)


def test_same_key_stays_in_one_partition_in_order(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("keyed")
    create_topics(kafka_bootstrap, [topic], partitions=3)

    produce(kafka_bootstrap, topic, MESSAGES)
    received = consume(kafka_bootstrap, topic, len(MESSAGES))

    partitions_of_key: dict[str, set[int]] = {}
    values_of_key: dict[str, list[str]] = {}
    for message in received:
        key = message.key().decode()
        partitions_of_key.setdefault(key, set()).add(message.partition())
        values_of_key.setdefault(key, []).append(message.value().decode())
    for key, partitions in partitions_of_key.items():
        assert len(partitions) == 1, f"key {key} spread over partitions {sorted(partitions)}"
    for key, values in values_of_key.items():
        expected = [value for k, value in MESSAGES if k == key]
        assert values == expected, f"key {key} out of order"


def test_create_topics_sets_partition_count(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topics = [unique_topic("input"), unique_topic("output")]
    create_topics(kafka_bootstrap, topics, partitions=4)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "metadata-reader"})
    try:
        metadata = consumer.list_topics(timeout=10)
    finally:
        consumer.close()
    for topic in topics:
        assert len(metadata.topics[topic].partitions) == 4


def test_create_topics_accepts_existing_topic(
    kafka_bootstrap: str, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("existing")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    create_topics(kafka_bootstrap, [topic], partitions=2)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "metadata-reader"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 0)


@pytest.mark.docker
@pytest.mark.skipif(not docker_engine_answers(), reason="no Docker engine responds on this machine")
def test_testcontainers_broker_round_trip(unique_topic: Callable[[str], str]) -> None:
    with start_docker_kafka() as bootstrap:
        topic = unique_topic("docker")
        create_topics(bootstrap, [topic], partitions=1)
        produce(bootstrap, topic, MESSAGES[:3])
        received = consume(bootstrap, topic, 3)
    assert [m.value().decode() for m in received] == [value for _, value in MESSAGES[:3]]
