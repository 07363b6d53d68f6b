"""Key layouts of the LMDB databases: byte order matches time and partition order."""

from __future__ import annotations

import math

import pytest

from statestore import StoreConfigError
from statestore.keys import (
    micros_bytes,
    partition_bytes,
    partition_of_bytes,
    position_key,
    timer_key,
    topic_partition_of_key,
    user_of_timer_key,
)


def test_time_bytes_sort_like_times() -> None:
    times = [-math.inf, -1e300, -5.5, -0.000001, 0.0, 0.000001, 1.5, 1.7e9, 1e300, math.inf]
    encoded = [micros_bytes(ts) for ts in times]
    assert encoded == sorted(encoded)
    assert len(set(encoded[2:-2])) == len(times) - 4


def test_time_bytes_round_to_microseconds() -> None:
    assert micros_bytes(1.0000004) == micros_bytes(1.0)
    assert micros_bytes(1.0000006) > micros_bytes(1.0)


def test_nan_time_is_rejected() -> None:
    with pytest.raises(StoreConfigError, match="NaN"):
        micros_bytes(math.nan)


@pytest.mark.parametrize("partition", [-1, 0, 1, 255, 2**31 - 1])
def test_partition_bytes_round_trip(partition: int) -> None:
    assert partition_of_bytes(partition_bytes(partition)) == partition


def test_partition_bytes_sort_kafka_partitions_first() -> None:
    assert partition_bytes(0) < partition_bytes(2) < partition_bytes(300) < partition_bytes(-1)


@pytest.mark.parametrize("partition", [-2, 2**31])
def test_out_of_range_partition_is_rejected(partition: int) -> None:
    with pytest.raises(StoreConfigError, match=f"partition {partition}"):
        partition_bytes(partition)


def test_position_key_round_trip() -> None:
    assert topic_partition_of_key(position_key("interactions", 12)) == ("interactions", 12)


@pytest.mark.parametrize("topic", ["", "bad\x00topic"])
def test_invalid_topic_is_rejected(topic: str) -> None:
    with pytest.raises(StoreConfigError, match="topic"):
        position_key(topic, 0)


def test_timer_key_ends_with_user() -> None:
    assert user_of_timer_key(timer_key(3, 12.5, "user\x00é")) == "user\x00é"
