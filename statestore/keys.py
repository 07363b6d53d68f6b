"""Byte layouts of the LMDB keys and of the partition-position values.

LMDB sorts keys as unsigned byte strings, so every integer in a key is big-endian and unsigned:

- `users`: the user id in UTF-8.
- `positions`: `topic`, a zero byte, the partition as u32. Kafka topic names never contain a
  zero byte, so the prefix `topic\\x00` selects exactly one topic.
- `timers`: the partition as u32, then the last event time as u64 microseconds with the sign bit
  flipped (so negative times sort first), then the user id. The value is empty.

Partitions are stored modulo 2**32, so the replay partition -1 sorts after every Kafka partition.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack

from statestore.errors import StateCodecError, StoreConfigError
from statestore.state import PartitionPosition, ReplayProgress

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SIGN_BIT = 1 << 63
_U64_MAX = (1 << 64) - 1
_MAX_SECONDS = _SIGN_BIT / 1_000_000
# Bytes that a timer key adds in front of the user id.
TIMER_PREFIX_SIZE = _U32.size + _U64.size
# LMDB's maximum key size in bytes (MDB_MAXKEYSIZE of the LMDB that py-lmdb 3.0 bundles, which
# `lmdb.Environment.max_key_size()` returns). The store reads the limit from its open
# environment, and a test checks that it equals this constant.
LMDB_MAX_KEY_BYTES = 511
# The maximum UTF-8 length of a user id. The `timers` keys put a partition and an event time in
# front of the user id, and a longer id makes the store's commit fail.
MAX_USER_ID_BYTES = LMDB_MAX_KEY_BYTES - TIMER_PREFIX_SIZE
_MIN_PARTITION = -1
_MAX_PARTITION = (1 << 31) - 1


def user_key(user: str) -> bytes:
    """Return the `users` key of `user`."""
    return user.encode("utf-8")


def user_of_key(key: bytes) -> str:
    """Return the user id of a `users` key."""
    return bytes(key).decode("utf-8")


def partition_bytes(partition: int) -> bytes:
    """Return `partition` as the 4-byte prefix of timer keys and suffix of position keys."""
    if not _MIN_PARTITION <= partition <= _MAX_PARTITION:
        raise StoreConfigError(
            f"partition {partition} is out of range: use a Kafka partition (0..{_MAX_PARTITION}) "
            "or -1 for replay"
        )
    return _U32.pack(partition & 0xFFFFFFFF)


def partition_of_bytes(raw: bytes) -> int:
    """Invert `partition_bytes`."""
    (value,) = _U32.unpack(raw)
    return value - (1 << 32) if value > _MAX_PARTITION else value


def micros_bytes(ts: float) -> bytes:
    """Return the event time `ts` (s) as 8 bytes that sort in time order, at 1 µs resolution.

    Times beyond the ±2**63 µs range (infinity included) map to the first or last key.
    """
    if math.isnan(ts):
        raise StoreConfigError("event time NaN is invalid: use seconds since the Unix epoch")
    if ts >= _MAX_SECONDS:
        return _U64.pack(_U64_MAX)
    if ts <= -_MAX_SECONDS:
        return _U64.pack(0)
    micros = min(max(round(ts * 1_000_000), -_SIGN_BIT), _SIGN_BIT - 1)
    return _U64.pack(micros + _SIGN_BIT)


def timer_key(partition: int, last_ts: float, user: str) -> bytes:
    """Return the `timers` key of a user with an open session."""
    return partition_bytes(partition) + micros_bytes(last_ts) + user_key(user)


def user_of_timer_key(key: bytes) -> str:
    """Return the user id at the end of a `timers` key."""
    return user_of_key(key[TIMER_PREFIX_SIZE:])


def position_prefix(topic: str) -> bytes:
    """Return the prefix of every `positions` key of `topic`."""
    if not topic or "\x00" in topic:
        raise StoreConfigError(f"topic {topic!r} is invalid: use a Kafka topic name")
    return topic.encode("utf-8") + b"\x00"


def position_key(topic: str, partition: int) -> bytes:
    """Return the `positions` key of `topic[partition]`."""
    return position_prefix(topic) + partition_bytes(partition)


def topic_partition_of_key(key: bytes) -> tuple[str, int]:
    """Invert `position_key`."""
    raw = bytes(key)
    topic, partition = raw[:-5], raw[-4:]
    return topic.decode("utf-8"), partition_of_bytes(partition)


def encode_position(position: PartitionPosition) -> bytes:
    """Encode a partition position as the msgpack array `[next_offset, watermark]`.

    A replay position gets a third element, the map `{"order", "output", "output_bytes",
    "session_close_outputs", "batch_size"}` (`batch_size` only when known).
    Readers of the two-element form (versions before it) reject such a record as corrupt.
    """
    fields: list[object] = [int(position.next_offset), float(position.watermark)]
    if position.replay is not None:
        progress: dict[str, object] = {
            "order": position.replay.order,
            "output": position.replay.output,
            "output_bytes": int(position.replay.output_bytes),
            "session_close_outputs": bool(position.replay.session_close_outputs),
        }
        if position.replay.batch_size is not None:
            progress["batch_size"] = int(position.replay.batch_size)
        fields.append(progress)
    return msgpack.packb(fields)


def decode_position(blob: bytes) -> PartitionPosition:
    """Invert `encode_position`; the two-element form gives `replay=None`."""
    try:
        fields = msgpack.unpackb(blob)
        next_offset, watermark, *extra = fields
        replay = _replay_progress(extra[0]) if extra else None
        return PartitionPosition(int(next_offset), float(watermark), replay)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
        raise StateCodecError(f"partition position record is corrupt: {error}") from error


def _replay_progress(fields: dict[str, Any]) -> ReplayProgress:
    output = fields["output"]
    batch_size = fields.get("batch_size")
    return ReplayProgress(
        order=str(fields["order"]),
        output=None if output is None else str(output),
        output_bytes=int(fields["output_bytes"]),
        session_close_outputs=bool(fields.get("session_close_outputs", False)),
        batch_size=None if batch_size is None else int(batch_size),
    )
