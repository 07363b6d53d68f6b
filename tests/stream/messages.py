"""A stand-in for a consumed Kafka message, for tests of the worker and the changelog restore."""

from __future__ import annotations

import time
from typing import Any

import msgpack
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError

INPUT_TOPIC = "interactions"


class ConsumedMessage:
    """A consumed message with the accessors of `confluent_kafka.Message` that the worker and
    the changelog reader call.

    `timestamp_ms` is the message's timestamp in milliseconds since the epoch, or 0 for none
    (the worker then has no append time). A message with `error` set is a consumer event, such
    as the end of a partition, and carries no record.
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: Any,
        value: Any,
        timestamp_ms: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
        error: KafkaError | None = None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._timestamp_ms = timestamp_ms
        self._headers = headers
        self._error = error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> Any:
        return self._key

    def value(self) -> Any:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._timestamp_ms)

    def error(self) -> KafkaError | None:
        return self._error


def event_message(
    partition: int, offset: int, user: str, row: int, ts: float, topic: str = INPUT_TOPIC
) -> ConsumedMessage:
    """Return the msgpack event of `user` on item `i{row}` at event time `ts` (seconds), keyed
    by the user and timestamped now."""
    value = msgpack.packb({"user": user, "item": f"i{row}", "ts": ts})
    now_ms = int(time.time() * 1000)
    return ConsumedMessage(topic, partition, offset, user.encode(), value, timestamp_ms=now_ms)


def partition_eof(topic: str, partition: int, offset: int) -> ConsumedMessage:
    """Return the end-of-partition event that the consumer reports at `offset`."""
    error = KafkaError(KafkaError._PARTITION_EOF)
    return ConsumedMessage(topic, partition, offset, None, None, error=error)
