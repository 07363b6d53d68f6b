"""Decoding and validation of interaction events from the input topic or an event-log file.

A Kafka value is a msgpack map with `user`, `item`, `ts` and the optional `impressions`,
`candidates`, `type` and `event_id`. `decode_event` turns one raw message into an `Event`, or
into a `DeadLetter` that names the reason (a short snake_case code for metrics), the bad value
and the fix. It returns a `DeadLetter` for bad input instead of raising, so the worker keeps going.

Event times are checked against the wall clock: a `ts` more than `EventConfig.max_future_seconds`
ahead of it is rejected. An accepted one would move its partition's event-time watermark into
the future. The timers would then close every session of that partition after each event, and
`state evict` without --now would measure inactivity from that future time.

Hostile input is bounded before any allocation: the message size is checked first, and msgpack
rejects any string, binary, array or map header longer than the message itself could hold.
`stream.event_decoding` builds Python objects only for the fields that validation reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statestore.keys import MAX_USER_ID_BYTES
from stream.errors import ConfigError
from stream.event_decoding import (
    InvalidEventError,
    SkippedContainer,
    short_repr,
    type_name,
    unpack_event_fields,
)

# Event times above this many seconds (about the year 5138) only make sense as milliseconds.
MAX_TS_SECONDS = 1e11
# Event times above this are invalid in either unit (about the year 5138 in milliseconds).
MAX_TS_MILLISECONDS = 1e14
# With --ts-unit ms, event times below this many milliseconds (1973-03-03) only make sense as
# seconds: a time in seconds of any date from 1973 to 5138 lies between 1e8 and 1e11.
MIN_TS_MILLISECONDS = 1e11
# Invalid event times up to this bound read as microseconds of a date from 1973 to 5138. Those
# up to 1000 times it read as nanoseconds, and the rejection message names that unit.
MAX_TS_MICROSECONDS = 1e17
# Seconds an event time may lie ahead of the wall clock by default. An event further ahead
# would move its partition's watermark into the future, and the timers would then close every
# session of that partition after each event.
DEFAULT_MAX_FUTURE_SECONDS = 300.0

# Words for the `ts` unit in messages, by `EventConfig.ts_unit`.
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}

# Every reason code that `decode_event` can return, so that metrics can create their labels.
REASONS = (
    "message_too_large",
    "invalid_msgpack",
    "not_a_map",
    "invalid_key",
    "missing_user",
    "invalid_user",
    "user_key_mismatch",
    "missing_item",
    "invalid_item",
    "unknown_item",
    "missing_ts",
    "invalid_ts",
    "ts_in_milliseconds",
    "ts_in_seconds",
    "ts_in_future",
    "invalid_impressions",
    "too_many_impressions",
    "invalid_candidates",
    "too_many_candidates",
    "no_known_candidates",
    "invalid_type",
    "invalid_event_id",
)


@dataclass(frozen=True)
class Position:
    """Source of a message: a Kafka topic, partition and offset.

    `replay` uses the file name as topic, partition -1 and the record number as offset.
    """

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class EventConfig:
    """Limits and units for event validation.

    max_message_bytes: the largest accepted value; Kafka's default `message.max.bytes` is
        1048588, so a larger value cannot come from a broker with default settings.
    max_list_length: the maximum number of entries of `impressions` or `candidates`.
    max_id_length: the maximum number of characters of a user id, item id, `type` or `event_id`.
    ts_unit: "s" when `ts` is in seconds, "ms" when producers send milliseconds.
    max_future_seconds: the maximum seconds an event time may lie ahead of the wall clock of
        the process that validates it. A later event is rejected as `ts_in_future`. The margin
        allows for producer clocks that run ahead. It also bounds how far a partition's
        watermark can run ahead of real time, and so how much earlier than `session_gap` the
        timers can close an idle session. None turns the check off, for example to replay a
        log whose times are all in the future.
    """

    max_message_bytes: int = 1 << 20
    max_list_length: int = 1000
    max_id_length: int = 256
    ts_unit: str = "s"
    max_future_seconds: float | None = DEFAULT_MAX_FUTURE_SECONDS

    def __post_init__(self) -> None:
        if self.ts_unit not in ("s", "ms"):
            raise ConfigError(f"ts_unit {self.ts_unit!r} is invalid: use 's' or 'ms'")
        for name in ("max_message_bytes", "max_list_length", "max_id_length"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} {value} is invalid: use a positive integer")
        future = self.max_future_seconds
        if future is not None and not (math.isfinite(future) and future >= 0):
            raise ConfigError(
                f"max_future_seconds {future} is invalid: use a finite number of seconds >= 0, "
                "or None to accept any future event time"
            )

    @property
    def unit_name(self) -> str:
        """The unit of `ts` in words, for messages: "seconds" or "milliseconds"."""
        return _UNIT_NAMES[self.ts_unit]


@dataclass(frozen=True)
class Event:
    """One validated interaction.

    `item` is the external item id (always a str) and `row` its row in the bundle's item table.
    `impressions` and `candidates` hold item rows without duplicates, in their first order.
    Impression items outside the vocabulary are dropped and counted in `dropped_impressions`;
    unknown candidates likewise in `dropped_candidates`. `append_ts` is the Kafka append time
    in seconds, or None outside Kafka.
    """

    user: str
    item: str
    row: int
    ts: float
    impressions: tuple[int, ...] | None
    candidates: tuple[int, ...] | None
    event_type: str | None
    event_id: str
    topic: str
    partition: int
    offset: int
    append_ts: float | None = None
    dropped_impressions: int = 0
    dropped_candidates: int = 0

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed decoding or validation, kept raw for the dead-letter topic.

    `reason` is one of `REASONS`, and `message` names the bad value and the fix. `position` is
    written `topic[partition]@offset`.
    """

    key: bytes | None
    value: bytes | None
    reason: str
    message: str
    position: str
    # The Kafka headers of the rejected message, passed on to the dead-letter topic.
    headers: tuple[tuple[str, bytes | None], ...] = ()


def _external_id(raw: Any, field: str, config: EventConfig) -> str:
    """Return a user or item id as str; bool, float and other types are invalid."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidEventError(
            f"invalid_{field}",
            f"{field} {short_repr(raw)} has type {type_name(raw)}: send a string or an integer",
        )
    text = str(raw)
    if not text or len(text) > config.max_id_length:
        raise InvalidEventError(
            f"invalid_{field}",
            f"{field} {short_repr(text)} has {len(text)} characters: send an id of 1 to "
            f"{config.max_id_length} characters",
        )
    return text


def _user(fields: Mapping[str, Any], key: bytes | None, config: EventConfig) -> str:
    if "user" not in fields:
        raise InvalidEventError("missing_user", "field 'user' is missing: add the user id")
    user = _external_id(fields["user"], "user", config)
    _check_user_bytes(user)
    if key is None:
        return user
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEventError(
            "invalid_key", f"Kafka key {short_repr(key)} is not UTF-8: key events by the user id"
        ) from None
    if key_text != user:
        raise InvalidEventError(
            "user_key_mismatch",
            f"user {short_repr(user)} differs from the Kafka key {short_repr(key_text)}: "
            "key each event by its user id",
        )
    return user


def _check_user_bytes(user: str) -> None:
    """Reject a user id that is too long in UTF-8 for the state store's LMDB keys."""
    size = len(user.encode("utf-8"))
    if size > MAX_USER_ID_BYTES:
        raise InvalidEventError(
            "invalid_user",
            f"user {short_repr(user)} is {size} bytes in UTF-8, more than the maximum of "
            f"{MAX_USER_ID_BYTES} bytes that the state store's keys take: send a user id of at "
            f"most {MAX_USER_ID_BYTES} bytes in UTF-8 (fewer non-ASCII characters)",
        )


def _item(fields: Mapping[str, Any], row_of: Mapping[str, int], config: EventConfig):
    if "item" not in fields:
        raise InvalidEventError("missing_item", "field 'item' is missing: add the item id")
    item = _external_id(fields["item"], "item", config)
    row = row_of.get(item)
    if row is None:
        raise InvalidEventError(
            "unknown_item",
            f"item {short_repr(item)} is not in the model bundle's vocabulary: "
            "export a bundle that includes it",
        )
    return item, row


def _ts(fields: Mapping[str, Any], config: EventConfig, now: float) -> float:
    """Return the event time in seconds; `now` is the wall-clock time in seconds."""
    unit = config.unit_name
    if "ts" not in fields:
        raise InvalidEventError(
            "missing_ts", f"field 'ts' is missing: add the event time in {unit}"
        )
    raw = fields["ts"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidEventError(
            "invalid_ts",
            f"ts {short_repr(raw)} has type {type_name(raw)}: send a number of {unit}",
        )
    ts = float(raw)
    if not math.isfinite(ts) or ts < 0:
        raise InvalidEventError(
            "invalid_ts",
            f"ts {short_repr(raw)} is not a valid event time in {unit}: send {unit} since the "
            "Unix epoch",
        )
    if ts > MAX_TS_MILLISECONDS:
        raise InvalidEventError("invalid_ts", _too_large_message(raw, ts, unit))
    ts = _ts_in_seconds(raw, ts, config)
    _check_not_in_future(raw, ts, config, now)
    return ts


def _too_large_message(raw: Any, ts: float, unit: str) -> str:
    """Return the rejection message of a `ts` above `MAX_TS_MILLISECONDS` in `unit` ("seconds"
    or "milliseconds"), which names microseconds or nanoseconds where the value reads as one."""
    if ts <= MAX_TS_MICROSECONDS:
        likely, factor = "microseconds", 1e6
    elif ts <= MAX_TS_MICROSECONDS * 1000:
        likely, factor = "nanoseconds", 1e9
    else:
        return (
            f"ts {short_repr(raw)} is not a valid event time in {unit}: send {unit} since the "
            "Unix epoch"
        )
    if unit == "milliseconds":
        factor /= 1000
    return (
        f"ts {short_repr(raw)} is too large for {unit} and looks like {likely}: send {unit} since "
        f"the Unix epoch (the value divided by {factor:.0f})"
    )


def _ts_in_seconds(raw: Any, ts: float, config: EventConfig) -> float:
    """Convert `ts` to seconds, rejecting a value that only makes sense in the other unit."""
    if config.ts_unit == "ms":
        if ts < MIN_TS_MILLISECONDS:
            raise InvalidEventError(
                "ts_in_seconds",
                f"ts {short_repr(raw)} is before 1973-03-03 in milliseconds and looks like "
                "seconds: send milliseconds, or run without --ts-unit ms",
            )
        return ts / 1000.0
    if ts > MAX_TS_SECONDS:
        raise InvalidEventError(
            "ts_in_milliseconds",
            f"ts {short_repr(raw)} is too large for seconds and looks like milliseconds: "
            "send seconds, or run with --ts-unit ms",
        )
    return ts


def _check_not_in_future(raw: Any, ts: float, config: EventConfig, now: float) -> None:
    """Reject an event time more than `max_future_seconds` ahead of `now` (both in seconds)."""
    tolerance = config.max_future_seconds
    if tolerance is None or ts - now <= tolerance:
        return
    raise InvalidEventError(
        "ts_in_future",
        f"ts {short_repr(raw)} ({_utc(ts)}) is {ts - now:.0f} s ahead of the current time "
        f"({_utc(now)}), more than the {tolerance:.0f} s allowed: send the event time in "
        f"{config.unit_name} since the Unix epoch, and check the producer's clock",
    )


def _utc(ts: float) -> str:
    """Format seconds since the Unix epoch as an ISO 8601 UTC time, to the second."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f} s"


def _rows(
    fields: Mapping[str, Any],
    field: str,
    row_of: Mapping[str, int],
    config: EventConfig,
) -> tuple[tuple[int, ...] | None, int]:
    """Return the known rows of a list of item ids (first order, no duplicates) and the count
    of unknown ids."""
    raw = fields.get(field)
    if raw is None:
        return None, 0
    # The decoder leaves an array of more than `max_list_length` entries as a SkippedContainer.
    length = raw.length if isinstance(raw, SkippedContainer) and raw.kind == "list" else None
    if length is None and isinstance(raw, list):
        length = len(raw)
    if length is None:
        raise InvalidEventError(
            f"invalid_{field}",
            f"{field} has type {type_name(raw)}: send a list of item ids",
        )
    if length > config.max_list_length:
        raise InvalidEventError(
            f"too_many_{field}",
            f"{field} has {length} entries, more than the maximum of "
            f"{config.max_list_length}: send at most that many",
        )
    rows: dict[int, None] = {}
    unknown = 0
    for index, entry in enumerate(raw):
        try:
            item = _external_id(entry, "item", config)
        except InvalidEventError as error:
            raise InvalidEventError(
                f"invalid_{field}", f"{field}[{index}]: {error.message}"
            ) from None
        row = row_of.get(item)
        if row is None:
            unknown += 1
        else:
            rows.setdefault(row, None)
    return tuple(rows), unknown


def _optional_text(fields: Mapping[str, Any], field: str, reason: str, config: EventConfig):
    raw = fields.get(field)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw or len(raw) > config.max_id_length:
        raise InvalidEventError(
            reason,
            f"{field} {short_repr(raw)} is invalid: send a string of 1 to "
            f"{config.max_id_length} characters",
        )
    return raw


def _no_candidates_message(unknown: int) -> str:
    """Return the rejection message of a `candidates` list with `unknown` ids and no known one."""
    fix = "send known candidates, or leave the field out or null to rank the whole catalog"
    if unknown == 0:
        return f"candidates is empty: {fix}"
    return f"none of the {unknown} candidates is in the model bundle's vocabulary: {fix}"


def _validate(
    key: bytes | None,
    value: bytes,
    position: Position,
    row_of: Mapping[str, int],
    config: EventConfig,
    append_ts: float | None,
    now: float,
) -> Event:
    fields = unpack_event_fields(value, config.max_message_bytes, config.max_list_length)
    user = _user(fields, key, config)
    item, row = _item(fields, row_of, config)
    ts = _ts(fields, config, now)
    impressions, dropped_impressions = _rows(fields, "impressions", row_of, config)
    candidates, dropped_candidates = _rows(fields, "candidates", row_of, config)
    if candidates is not None and not candidates:
        raise InvalidEventError("no_known_candidates", _no_candidates_message(dropped_candidates))
    event_type = _optional_text(fields, "type", "invalid_type", config)
    event_id = _optional_text(fields, "event_id", "invalid_event_id", config)
    return Event(
        user=user,
        item=item,
        row=row,
        ts=ts,
        impressions=impressions or None,
        candidates=candidates,
        event_type=event_type,
        event_id=event_id if event_id is not None else str(position),
        topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        append_ts=append_ts,
        dropped_impressions=dropped_impressions,
        dropped_candidates=dropped_candidates,
    )


def decode_event(
    key: bytes | None,
    value: bytes | None,
    position: Position,
    row_of: Mapping[str, int],
    config: EventConfig = EventConfig(),
    append_ts: float | None = None,
    now: float | None = None,
) -> Event | DeadLetter:
    """Decode and validate one message; return an `Event`, or a `DeadLetter` with the reason.

    key: the Kafka key (UTF-8 user id) or None; value: the msgpack bytes; row_of: external item
    id -> item row of the bundle; append_ts: the Kafka append time in seconds, if known; now:
    the wall-clock time in seconds that `ts_in_future` is measured from (default: `time.time()`).
    """
    if now is None:
        now = time.time()
    try:
        if value is None:
            raise InvalidEventError(
                "invalid_msgpack", "value is empty (a tombstone): send a msgpack map"
            )
        return _validate(key, value, position, row_of, config, append_ts, now)
    except InvalidEventError as rejection:
        # The caller logs the dead letter: the worker at a limited rate, replay by line number.
        return DeadLetter(
            key=key,
            value=value,
            reason=rejection.reason,
            message=rejection.message,
            position=str(position),
        )
