"""Bounded decoding of event values: large nested values, repeated keys and key types."""

from __future__ import annotations

import struct
import tracemalloc

import msgpack
import pytest

from stream import event_decoding
from stream.event_decoding import (
    MAX_EVENT_KEYS,
    PLAIN_UNPACK_MAX_BYTES,
    _unpack_plain,
    _ValueReader,
    unpack_event_fields,
)
from stream.events import DeadLetter, Event, Position, decode_event

ROW_OF = {str(row): row for row in range(10)}
POSITION = Position("interactions", 0, 5)
TS = 1_700_000_000
# A map of three entries with the valid fields user "u1", item "1" and ts `TS`.
VALID_FIELDS = b"\xa4user\xa2u1\xa4item\xa11\xa2ts" + b"\xce" + struct.pack(">I", TS)
# Unpacking the values below whole builds about a million Python lists, which traced 64 MiB
# with msgpack 1.2.4. The bounded decoder stays near the size of the value.
MAX_PEAK_BYTES = 8 << 20


def empty_arrays(count: int) -> bytes:
    """Return an array32 of `count` empty arrays: `count` + 5 bytes."""
    return b"\xdd" + struct.pack(">I", count) + b"\x90" * count


def decode(value: bytes, key: bytes | None = b"u1") -> Event | DeadLetter:
    return decode_event(key, value, POSITION, ROW_OF, now=TS)


def decode_with_peak(value: bytes) -> tuple[Event | DeadLetter, int]:
    """Decode `value` and return the result with the peak of traced Python allocations."""
    tracemalloc.start()
    try:
        result = decode(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def rejection(value: bytes, reason: str) -> DeadLetter:
    result = decode(value)
    assert isinstance(result, DeadLetter), f"expected {reason}, got {result}"
    assert result.reason == reason, result.message
    return result


def test_array_of_empty_arrays_rejected_cheaply() -> None:
    result, peak = decode_with_peak(empty_arrays((1 << 20) - 100))

    assert isinstance(result, DeadLetter)
    assert result.reason == "not_a_map"
    assert result.message.startswith("value is a msgpack list, not a map")
    assert peak < MAX_PEAK_BYTES


def test_ignored_field_not_unpacked() -> None:
    value = b"\x84" + VALID_FIELDS + b"\xa5extra" + empty_arrays((1 << 20) - 100)

    result, peak = decode_with_peak(value)

    assert isinstance(result, Event)
    assert result.user == "u1"
    assert peak < MAX_PEAK_BYTES


def test_long_impressions_counted_unpacked() -> None:
    value = b"\x84" + VALID_FIELDS + b"\xabimpressions" + empty_arrays(500_000)

    result, peak = decode_with_peak(value)

    assert isinstance(result, DeadLetter)
    assert result.reason == "too_many_impressions"
    assert "impressions has 500000 entries" in result.message
    assert peak < MAX_PEAK_BYTES


def test_array_user_named_by_size() -> None:
    value = b"\x83\xa4user" + empty_arrays(100_000) + b"\xa4item\xa11\xa2ts\x01"

    letter = rejection(value, "invalid_user")

    assert "user <msgpack array of 100005 bytes> has type list" in letter.message


@pytest.mark.parametrize(
    ("fields", "reason", "expected"),
    [
        ({"impressions": {"a": 1}}, "invalid_impressions", "impressions has type dict"),
        ({"impressions": ["1", [1, 2]]}, "invalid_impressions", "impressions[1]: item <msgpack"),
        ({"candidates": ["1", {}]}, "invalid_candidates", "has type dict"),
        ({"ts": [1]}, "invalid_ts", "ts <msgpack array of 2 bytes> has type list"),
        ({"type": {}}, "invalid_type", "type <msgpack map of 1 byte> is invalid"),
        ({"event_id": [[]]}, "invalid_event_id", "event_id <msgpack array of 2 bytes>"),
    ],
    ids=["map_impressions", "array_entry", "map_candidate", "array_ts", "map_type", "array_id"],
)
def test_container_field_rejected(fields: dict, reason: str, expected: str) -> None:
    value = msgpack.packb({"user": "u1", "item": "1", "ts": TS} | fields, use_bin_type=True)

    letter = rejection(value, reason)

    assert expected in letter.message


def test_repeated_user_key_rejected() -> None:
    value = b"\x84\xa4user\xa5alice\xa4item\xa11\xa2ts\x01\xa4user\xa3bob"

    result = decode(value, key=b"bob")

    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_msgpack"
    assert "map key 'user' appears more than once" in result.message


def test_repeated_ignored_key_rejected() -> None:
    value = b"\x85" + VALID_FIELDS + b"\xa5extra\x01\xa5extra\x02"

    letter = rejection(value, "invalid_msgpack")

    assert "map key 'extra' appears more than once" in letter.message


@pytest.mark.parametrize("extra", [MAX_EVENT_KEYS - 3, MAX_EVENT_KEYS - 2, 50_000])
def test_map_key_count_bounded(extra: int) -> None:
    # 1,021 extra keys fit a plain value of at most 16 KiB; 50,000 go to the bounded reader.
    fields = {"user": "u1", "item": "1", "ts": TS} | {f"k{n}": None for n in range(extra)}
    value = msgpack.packb(fields, use_bin_type=True)

    result = decode(value, key=b"u1")

    if len(fields) <= MAX_EVENT_KEYS:
        assert not isinstance(result, DeadLetter), result
        return
    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_msgpack"
    assert result.message.startswith(
        f"map has {len(fields)} keys, more than the 1024 an event may have: send the event's "
        "fields without the rest"
    )


def test_same_key_as_str_and_bin_accepted() -> None:
    value = b"\x84" + VALID_FIELDS + b"\xc4\x04user\xa3bob"

    result = decode(value)

    assert isinstance(result, Event)
    assert result.user == "u1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x81\x01\x01", "map key 1 has type int"),
        (b"\x81\x91\x01\x01", "map key <msgpack array of 2 bytes> has type list"),
        (b"\x81\x80\x01", "map key <msgpack map of 1 byte> has type dict"),
    ],
    ids=["integer", "array", "map"],
)
def test_non_string_key_rejected(value: bytes, expected: str) -> None:
    letter = rejection(value, "invalid_msgpack")

    assert expected in letter.message
    assert "send a msgpack map with string keys" in letter.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"\x83\xa4user\xa2u1", "the value ends before its next msgpack object"),
        (b"\x81\xa5extra" + b"\x91" * 5000 + b"\x00", "StackError"),
        (b"\x81\xa5extra\x92\x01", "OutOfData"),
        (b"\x81\xabimpressions\x92\xa11", "OutOfData"),
        (b"\x83" + VALID_FIELDS + b"\x00\x00", "2 bytes after the first object"),
        (b"\x91\x01\x00", "1 byte after the first object"),
        (b"", "the value ends before its next msgpack object"),
    ],
    ids=[
        "truncated_map",
        "deep_ignored_field",
        "truncated_ignored_field",
        "truncated_impressions",
        "trailing_bytes",
        "trailing_after_array",
        "empty",
    ],
)
def test_malformed_map_rejected(value: bytes, expected: str) -> None:
    letter = rejection(value, "invalid_msgpack")

    assert expected in letter.message


# Values of the plain shape and values that the one-call unpack must leave to the bounded reader.
PLAIN_CASES = [
    {"user": "u", "item": "i", "ts": 1.5},
    {"user": 7, "item": 3, "ts": 10, "impressions": ["a", 2], "candidates": None},
    {"user": "u", "item": "i", "ts": 1, "extra": {"nested": [[], {"k": 1}]}},
    {"user": "u", b"item": "i", "ts": 1, "type": "click", "event_id": "e"},
]
UNPLAIN_VALUES = [
    msgpack.packb({"user": ["a"], "item": "i", "ts": 1}),
    msgpack.packb({"user": "u", "item": "i", "ts": 1, "impressions": [["a"]]}),
    msgpack.packb({"user": "u", "item": "i", "ts": 1, "impressions": {"a": 1}}),
    b"",
    msgpack.packb({"user": "u", "item": "i", "ts": 1, "candidates": list(range(1001))}),
    msgpack.packb({1: "u", "item": "i", "ts": 1}),
    b"\x83\xa4user\xa1u\xa4user\xa1v\xa2ts\x01",
    msgpack.packb({"user": "u", "item": "i", "ts": 1}) + b"\x00",
    msgpack.packb({"user": "u", "item": "i", "ts": 1})[:-1],
]


@pytest.mark.parametrize("fields", PLAIN_CASES)
def test_plain_unpack_equals_bounded_reader(fields: dict) -> None:
    value = msgpack.packb(fields, use_bin_type=True)

    plain = _unpack_plain(value, 1000)
    bounded = _ValueReader(value, 1000).read_map()

    assert plain is not None
    assert plain == bounded


@pytest.mark.parametrize("value", UNPLAIN_VALUES)
def test_plain_unpack_leaves_other_values(value: bytes) -> None:
    assert _unpack_plain(value, 1000) is None


def test_large_value_skips_plain_unpack(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(event_decoding, "_unpack_plain", lambda value, limit: calls.append(value))
    fields = {"user": "u", "item": "i", "ts": 1, "pad": "x" * PLAIN_UNPACK_MAX_BYTES}

    unpack_event_fields(msgpack.packb(fields), 1 << 20, 1000)

    assert calls == []
