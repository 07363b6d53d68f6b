"""Tests of stream.events.decode_event: every rejection reason and the valid cases."""

from __future__ import annotations

import math
import random
import struct

import msgpack
import pytest

from stream.errors import ConfigError
from stream.events import REASONS, DeadLetter, Event, EventConfig, Position, decode_event

ROW_OF = {str(row): row for row in range(100)} | {"apple": 100, "pear": 101}
POSITION = Position("interactions", 3, 1842)


def pack(fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def decode(
    fields: object, key: bytes | None = b"u1", config: EventConfig | None = None
) -> Event | DeadLetter:
    value = fields if isinstance(fields, bytes) else pack(fields)
    return decode_event(key, value, POSITION, ROW_OF, config or EventConfig())


def reason_of(result: Event | DeadLetter) -> str:
    assert isinstance(result, DeadLetter), f"expected a rejection, got {result}"
    return result.reason


def test_valid_event_decoded() -> None:
    result = decode({"user": "u1", "item": "apple", "ts": 1_700_000_000.5, "type": "click"})

    assert isinstance(result, Event)
    assert result.user == "u1"
    assert result.item == "apple"
    assert result.row == 100
    assert result.ts == 1_700_000_000.5
    assert result.event_type == "click"
    assert result.impressions is None
    assert result.candidates is None
    assert result.event_id == "interactions[3]@1842"
    assert (result.topic, result.partition, result.offset) == ("interactions", 3, 1842)


def test_integer_ids_become_strings() -> None:
    result = decode({"user": 7, "item": 42, "ts": 1_700_000_000}, key=b"7")

    assert isinstance(result, Event)
    assert result.user == "7"
    assert result.item == "42"
    assert result.row == 42
    assert isinstance(result.ts, float)


def test_event_without_key_accepted() -> None:
    result = decode({"user": "u9", "item": 1, "ts": 1.0}, key=None)

    assert isinstance(result, Event)
    assert result.user == "u9"


def test_event_id_and_append_time_kept() -> None:
    value = pack({"user": "u1", "item": 1, "ts": 5.0, "event_id": "e-1"})

    result = decode_event(b"u1", value, POSITION, ROW_OF, append_ts=6.25)

    assert isinstance(result, Event)
    assert result.event_id == "e-1"
    assert result.append_ts == 6.25


def test_impressions_drop_unknown_items() -> None:
    fields = {"user": "u1", "item": 1, "ts": 5.0, "impressions": [1, "2", "nope", 2, "x"]}

    result = decode(fields)

    assert isinstance(result, Event)
    assert result.impressions == (1, 2)
    assert result.dropped_impressions == 2


def test_candidates_decoded_to_rows() -> None:
    fields = {"user": "u1", "item": 1, "ts": 5.0, "candidates": ["pear", 3, "ghost"]}

    result = decode(fields)

    assert isinstance(result, Event)
    assert result.candidates == (101, 3)
    assert result.dropped_candidates == 1


def test_ts_in_milliseconds_accepted_with_ms_unit() -> None:
    result = decode(
        {"user": "u1", "item": 1, "ts": 1_700_000_000_123}, config=EventConfig(ts_unit="ms")
    )

    assert isinstance(result, Event)
    assert result.ts == pytest.approx(1_700_000_000.123)


def test_unknown_fields_ignored() -> None:
    result = decode({"user": "u1", "item": 1, "ts": 5.0, "extra": {"a": [1, 2]}})

    assert isinstance(result, Event)


# A msgpack map header with one entry, key "user", then a str32 header claiming 4 GiB.
GIGABYTE_HEADER = b"\x81\xa4user\xdb" + struct.pack(">I", 0xFFFFFFFF) + b"abc"
BIN_GIGABYTE_HEADER = b"\xc6" + struct.pack(">I", 0xFFFFFFF0)
ARRAY_GIGABYTE_HEADER = b"\x81\xabimpressions\xdd" + struct.pack(">I", 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xc1\xff not msgpack", "invalid_msgpack"),
        (b"", "invalid_msgpack"),
        (b"\x92\x01", "invalid_msgpack"),
        (GIGABYTE_HEADER, "invalid_msgpack"),
        (BIN_GIGABYTE_HEADER, "invalid_msgpack"),
        (ARRAY_GIGABYTE_HEADER, "invalid_msgpack"),
        (pack({"user": "u1"}) + b"\x00", "invalid_msgpack"),
        (pack({1: "u1"}), "invalid_msgpack"),
        (b"\x91" * 5000 + b"\x00", "invalid_msgpack"),
        (pack([1, 2, 3]), "not_a_map"),
        (pack("user"), "not_a_map"),
    ],
    ids=[
        "garbage",
        "empty",
        "truncated",
        "str32_4gib",
        "bin32_4gib",
        "array32_4gib",
        "trailing_bytes",
        "integer_key",
        "deep_nesting",
        "array",
        "string",
    ],
)
def test_undecodable_value_rejected(value: bytes, reason: str) -> None:
    assert reason_of(decode(value)) == reason


def test_tombstone_rejected() -> None:
    result = decode_event(b"u1", None, POSITION, ROW_OF)

    assert reason_of(result) == "invalid_msgpack"


def test_oversized_message_rejected() -> None:
    fields = {"user": "u1", "item": 1, "ts": 5.0, "pad": "x" * 2000}

    result = decode(fields, config=EventConfig(max_message_bytes=1000))

    assert reason_of(result) == "message_too_large"
    assert "1000" in result.message


VALID = {"user": "u1", "item": "apple", "ts": 1_700_000_000.0}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"user": None}, "missing_user"),
        ({"user": True}, "invalid_user"),
        ({"user": 1.5}, "invalid_user"),
        ({"user": ""}, "invalid_user"),
        ({"user": ["u1"]}, "invalid_user"),
        ({"user": "u" * 300}, "invalid_user"),
        ({"user": "u2"}, "user_key_mismatch"),
        ({"item": None}, "missing_item"),
        ({"item": 1.0}, "invalid_item"),
        ({"item": False}, "invalid_item"),
        ({"item": {"id": 1}}, "invalid_item"),
        ({"item": b"apple"}, "invalid_item"),
        ({"item": "banana"}, "unknown_item"),
        ({"item": 100000}, "unknown_item"),
        ({"ts": None}, "missing_ts"),
        ({"ts": math.nan}, "invalid_ts"),
        ({"ts": math.inf}, "invalid_ts"),
        ({"ts": -math.inf}, "invalid_ts"),
        ({"ts": -5.0}, "invalid_ts"),
        ({"ts": "1700000000"}, "invalid_ts"),
        ({"ts": True}, "invalid_ts"),
        ({"ts": 1e20}, "invalid_ts"),
        ({"ts": 1_700_000_000_000}, "ts_in_milliseconds"),
        ({"impressions": "apple"}, "invalid_impressions"),
        ({"impressions": [1, 2.5]}, "invalid_impressions"),
        ({"candidates": {"a": 1}}, "invalid_candidates"),
        ({"candidates": [None]}, "invalid_candidates"),
        ({"candidates": ["ghost"]}, "no_known_candidates"),
        ({"candidates": []}, "no_known_candidates"),
        ({"candidates": list(range(1001))}, "too_many_candidates"),
        ({"type": 5}, "invalid_type"),
        ({"type": "t" * 257}, "invalid_type"),
        ({"event_id": ""}, "invalid_event_id"),
        ({"event_id": 17}, "invalid_event_id"),
        ({"event_id": "e" * 257}, "invalid_event_id"),
    ],
)
def test_invalid_field_rejected(changes: dict, reason: str) -> None:
    fields = {**VALID, **changes}
    fields = {name: value for name, value in fields.items() if value is not None}

    result = decode(fields)

    assert reason_of(result) == reason
    assert reason in REASONS
    assert result.position == "interactions[3]@1842"


def test_million_impressions_rejected() -> None:
    fields = {**VALID, "impressions": [7] * 1_000_000}
    value = pack(fields)

    result = decode(value)

    assert reason_of(result) == "too_many_impressions"
    assert "1000000" in result.message
    assert result.value == value


def test_invalid_key_rejected() -> None:
    result = decode(VALID, key=b"\xff\xfe")

    assert reason_of(result) == "invalid_key"


def test_message_names_value_and_fix() -> None:
    ms_result = decode({**VALID, "ts": 1_700_000_000_000})
    nan_result = decode({**VALID, "ts": math.nan})
    item_result = decode({**VALID, "item": "banana"})

    assert "1700000000000" in ms_result.message
    assert "--ts-unit ms" in ms_result.message
    assert "nan" in nan_result.message
    assert "'banana'" in item_result.message
    assert "vocabulary" in item_result.message


def test_rejection_keeps_raw_key_and_value() -> None:
    value = b"\xc1 junk"

    result = decode_event(b"k", value, POSITION, ROW_OF)

    assert isinstance(result, DeadLetter)
    assert result.key == b"k"
    assert result.value == value
    assert result.position == "interactions[3]@1842"


def test_long_values_shortened_in_message() -> None:
    result = decode({**VALID, "item": "z" * 200})

    assert reason_of(result) == "unknown_item"
    assert len(result.message) < 200


def test_invalid_event_config_rejected() -> None:
    with pytest.raises(ConfigError, match="ts_unit 'min'"):
        EventConfig(ts_unit="min")
    with pytest.raises(ConfigError, match="max_list_length 0"):
        EventConfig(max_list_length=0)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(5)
    valid = pack({**VALID, "impressions": [1, 2, "apple"], "candidates": ["pear", 3]})
    for _ in range(3000):
        mutated = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        for value in (bytes(mutated), noise):
            result = decode_event(b"u1", value, POSITION, ROW_OF)
            assert isinstance(result, (Event, DeadLetter))
            if isinstance(result, DeadLetter):
                assert result.reason in REASONS


def test_json_value_is_named_as_json() -> None:
    result = decode(b'{"user": "u1", "item": "apple", "ts": 1.0}', key=b"u1")

    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_msgpack"
    assert "it starts like JSON" in result.message


def test_empty_unpacker_error_is_not_shown_as_quotes() -> None:
    result = decode(b"\xc1", key=b"u1")

    assert isinstance(result, DeadLetter)
    assert "(FormatError)" in result.message


# A fixed wall clock for the ts_in_future checks: 2023-11-14T22:13:20Z.
NOW = 1_700_000_000.0


def decode_at(fields: dict, now: float = NOW, config: EventConfig | None = None):
    return decode_event(b"u1", pack(fields), POSITION, ROW_OF, config or EventConfig(), now=now)


def test_far_future_ts_rejected() -> None:
    result = decode_at({**VALID, "ts": 4e9})

    assert reason_of(result) == "ts_in_future"
    assert "2096-" in result.message
    assert "2023-11-14T22:13:20Z" in result.message
    assert "300 s allowed" in result.message
    assert "ts_in_future" in REASONS


def test_future_ts_within_tolerance_accepted() -> None:
    result = decode_at({**VALID, "ts": NOW + 300})

    assert isinstance(result, Event)
    assert result.ts == NOW + 300


def test_future_ts_just_past_tolerance_rejected() -> None:
    result = decode_at({**VALID, "ts": NOW + 301})

    assert reason_of(result) == "ts_in_future"


def test_future_ts_tolerance_configurable() -> None:
    config = EventConfig(max_future_seconds=3600.0)

    accepted = decode_at({**VALID, "ts": NOW + 3000}, config=config)
    rejected = decode_at({**VALID, "ts": NOW + 3700}, config=config)

    assert isinstance(accepted, Event)
    assert reason_of(rejected) == "ts_in_future"


def test_future_check_off_accepts_any_time() -> None:
    result = decode_at({**VALID, "ts": 4e9}, config=EventConfig(max_future_seconds=None))

    assert isinstance(result, Event)
    assert result.ts == 4e9


def test_future_ts_checked_against_wall_clock() -> None:
    result = decode_event(b"u1", pack({**VALID, "ts": 4e9}), POSITION, ROW_OF)

    assert reason_of(result) == "ts_in_future"


def test_old_ts_accepted_against_wall_clock() -> None:
    result = decode_event(b"u1", pack({**VALID, "ts": 1_000_000_000}), POSITION, ROW_OF)

    assert isinstance(result, Event)


def test_future_ts_in_milliseconds_rejected() -> None:
    config = EventConfig(ts_unit="ms")

    result = decode_at({**VALID, "ts": 4_000_000_000_000}, config=config)

    assert reason_of(result) == "ts_in_future"
    assert "milliseconds" in result.message


@pytest.mark.parametrize("ts", [1_600_000_000, 1_600_000_000.5, 0, 99_999_999_999])
def test_ts_in_seconds_rejected_with_ms_unit(ts: float) -> None:
    result = decode_at({**VALID, "ts": ts}, config=EventConfig(ts_unit="ms"))

    assert reason_of(result) == "ts_in_seconds"
    assert "ts_in_seconds" in REASONS
    assert "looks like seconds" in result.message
    assert "without --ts-unit ms" in result.message


def test_earliest_millisecond_time_accepted_with_ms_unit() -> None:
    result = decode_at({**VALID, "ts": 100_000_000_000}, config=EventConfig(ts_unit="ms"))

    assert isinstance(result, Event)
    assert result.ts == 100_000_000.0


def test_microseconds_message_names_milliseconds() -> None:
    result = decode_at({**VALID, "ts": 1_600_000_000_000_000}, config=EventConfig(ts_unit="ms"))

    assert reason_of(result) == "invalid_ts"
    assert "send milliseconds since the Unix epoch" in result.message
    assert "seconds since" not in result.message.replace("milliseconds since", "")


@pytest.mark.parametrize(
    ("changes", "unit"),
    [
        ({"ts": None}, "milliseconds"),
        ({"ts": "1700000000000"}, "milliseconds"),
        ({"ts": -1}, "milliseconds"),
    ],
)
def test_ts_messages_name_ms_unit(changes: dict, unit: str) -> None:
    fields = {name: value for name, value in {**VALID, **changes}.items() if value is not None}

    result = decode_at(fields, config=EventConfig(ts_unit="ms"))

    assert isinstance(result, DeadLetter)
    assert unit in result.message
    assert " seconds" not in result.message


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_invalid_future_tolerance_rejected(value: float) -> None:
    with pytest.raises(ConfigError, match=r"^max_future_seconds .* is invalid: use a finite"):
        EventConfig(max_future_seconds=value)


def test_empty_candidates_message() -> None:
    result = decode({**VALID, "candidates": []})

    assert reason_of(result) == "no_known_candidates"
    assert result.message.startswith("candidates is empty: ")
    assert "none of the 0" not in result.message
    assert "leave the field out" in result.message


def test_unknown_candidates_message() -> None:
    result = decode({**VALID, "candidates": ["ghost", "spook"]})

    assert reason_of(result) == "no_known_candidates"
    assert result.message.startswith("none of the 2 candidates is in the model bundle's")


@pytest.mark.parametrize(
    ("unit", "ts", "likely", "divisor"),
    [
        ("ms", 1_796_498_186_000_000, "microseconds", "1000"),
        ("s", 1_796_498_186_000_000, "microseconds", "1000000"),
        ("ms", 1_796_498_186_000_000_000, "nanoseconds", "1000000"),
        ("s", 1_796_498_186_000_000_000, "nanoseconds", "1000000000"),
    ],
)
def test_too_large_ts_names_likely_unit(unit: str, ts: int, likely: str, divisor: str) -> None:
    config = EventConfig(ts_unit=unit)

    result = decode_at({**VALID, "ts": ts}, config=config)

    assert reason_of(result) == "invalid_ts"
    assert f"is too large for {config.unit_name} and looks like {likely}" in result.message
    assert f"send {config.unit_name} since the Unix epoch" in result.message
    assert f"(the value divided by {divisor})" in result.message


def test_ts_beyond_nanoseconds_names_no_unit() -> None:
    result = decode_at({**VALID, "ts": 1e21}, config=EventConfig(ts_unit="ms"))

    assert reason_of(result) == "invalid_ts"
    assert "looks like" not in result.message
    assert "is not a valid event time in milliseconds" in result.message


def test_ms_ts_decoded_as_float_seconds() -> None:
    config = EventConfig(ts_unit="ms")

    result = decode_at({**VALID, "ts": 1_793_906_436_000}, now=1_793_906_436.0, config=config)

    assert isinstance(result, Event)
    assert isinstance(result.ts, float)
    assert result.ts == 1_793_906_436.0


def test_null_event_id_gets_input_position() -> None:
    result = decode({**VALID, "event_id": None, "type": None})

    assert isinstance(result, Event)
    assert result.event_id == "interactions[3]@1842"
    assert result.event_type is None


def test_longest_ids_accepted() -> None:
    result = decode({**VALID, "event_id": "e" * 256, "type": "t" * 256})

    assert isinstance(result, Event)
    assert result.event_id == "e" * 256
