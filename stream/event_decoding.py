"""Bounded msgpack decoding of an event value into the fields that event validation reads.

A msgpack value of 1 MiB can hold a million empty arrays, and unpacking it whole builds a
million Python lists (64 MiB traced and 0.3 s with msgpack 1.2.4 in one measurement). This
module therefore builds Python objects only for the fields that `stream.events` validates, and
only as far as those fields may nest. It walks everything else with `msgpack.Unpacker.skip`,
which checks the structure without creating objects:

- A value whose first byte is not a map header is rejected as `not_a_map`, once a skip has
  checked that it is one msgpack object.
- The map's keys must be strings or binaries and may not repeat, and the map may have at most
  `MAX_EVENT_KEYS` of them, so that a hostile value cannot make each message cost a tenth of a
  second of key checks.
- The value of an ignored field is skipped.
- A container where validation expects a scalar, and an array in `impressions` or `candidates`
  with more entries than the configured maximum, become a `SkippedContainer`.

Walking the fields in Python made `decode_event` slower for an ordinary event: about 21 us
against 13 us with one `msgpack.unpackb` call. That is an estimate from one measurement (best
of seven runs over 20,000 events of five fields and ten impressions on a 2-core VM). So a value
of at most `PLAIN_UNPACK_MAX_BYTES` is unpacked in one call first.
Such a value holds at most that many objects, which bounds its memory and time. The result is
used only when it has the plain shape (string keys, no repeat, scalars and lists of scalars in
the fields that validation reads). Any other value goes through the bounded reader, so every
rejection message is the same on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

# Fields that validation reads as one scalar (a string or a number).
SCALAR_FIELDS = frozenset({"user", "item", "ts", "type", "event_id"})
# Fields that validation reads as an array of scalars.
LIST_FIELDS = frozenset({"impressions", "candidates"})

# Keys of an event map: the fields that validation reads, and whatever else producers add. A
# 1 MiB map can hold about 145,000 short keys, whose checks took about 0.1 s on one core.
MAX_EVENT_KEYS = 1024

# Values up to this many bytes are first unpacked in one call (see the module docstring). An
# event with 1000 impressions of six-character ids takes about 7 KiB.
PLAIN_UNPACK_MAX_BYTES = 16 * 1024

# First bytes of msgpack map headers (fixmap, map16, map32) and array headers (fixarray,
# array16, array32), from the msgpack specification.
_MAP_FIRST_BYTES = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAY_FIRST_BYTES = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
# First bytes of str (fixstr, str8, str16, str32) and bin (bin8, bin16, bin32) headers.
_KEY_FIRST_BYTES = frozenset(range(0xA0, 0xC0)) | {0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6}


class InvalidEventError(Exception):
    """Internal signal of `decode_event`: the message fails one rule."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SkippedContainer:
    """A msgpack array or map that was checked but not unpacked, in place of its value.

    kind: the Python type name that unpacking would give, "list" or "dict".
    size: its length in bytes. length: its number of entries, where it was read.
    """

    kind: str
    size: int
    length: int | None = None

    def __repr__(self) -> str:
        name = "array" if self.kind == "list" else "map"
        unit = "byte" if self.size == 1 else "bytes"
        return f"<msgpack {name} of {self.size} {unit}>"


def short_repr(value: Any, limit: int = 60) -> str:
    """Return `repr(value)` cut to `limit` characters, so hostile values cannot flood a log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: Any) -> str:
    """Return the Python type name of a decoded value, or the kind of a `SkippedContainer`."""
    if isinstance(value, SkippedContainer):
        return value.kind
    return type(value).__name__


def _container_kind(first_byte: int) -> str | None:
    if first_byte in _MAP_FIRST_BYTES:
        return "dict"
    if first_byte in _ARRAY_FIRST_BYTES:
        return "list"
    return None


def _unpacker(size: int) -> msgpack.Unpacker:
    # No container or string can have more entries than the message has bytes, so these
    # limits reject a length header that claims gigabytes before anything is allocated.
    return msgpack.Unpacker(
        raw=False,
        max_buffer_size=max(size, 1),
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size,
        max_ext_len=size,
    )


def _invalid_msgpack(value: bytes, detail: str) -> InvalidEventError:
    hint = " (it starts like JSON)" if value[:1] in (b"{", b"[") else ""
    return InvalidEventError(
        "invalid_msgpack",
        f"value of {len(value)} bytes is not one valid msgpack object{hint} ({detail}): "
        "send a msgpack map",
    )


def unpack_event_fields(value: bytes, max_message_bytes: int, max_list_length: int) -> dict:
    """Decode an event value into a dict of the fields that validation reads.

    Raise `InvalidEventError` with the reason `message_too_large`, `invalid_msgpack` or
    `not_a_map`. Keys of ignored fields are checked but left out of the dict.
    """
    size = len(value)
    if size > max_message_bytes:
        raise InvalidEventError(
            "message_too_large",
            f"message of {size} bytes exceeds the maximum of {max_message_bytes}: "
            "send smaller events (fewer impressions or candidates)",
        )
    if 0 < size <= PLAIN_UNPACK_MAX_BYTES and value[0] in _MAP_FIRST_BYTES:
        fields = _unpack_plain(value, max_list_length)
        if fields is not None:
            return fields
    reader = _ValueReader(value, max_list_length)
    try:
        if not value or value[0] not in _MAP_FIRST_BYTES:
            reader.reject_non_map()
        fields = reader.read_map()
    except (msgpack.UnpackException, ValueError) as error:
        detail = type(error).__name__ + (f": {short_repr(str(error))}" if str(error) else "")
        raise _invalid_msgpack(value, detail) from None
    reader.check_end()
    return fields


class _Pairs(list):
    """The key-value pairs of an unpacked msgpack map, a type distinct from an unpacked array."""


def _unpack_plain(value: bytes, max_list_length: int) -> dict | None:
    """Return the fields of a value of the plain shape, unpacked in one call, or None.

    None sends the value to the bounded reader, which returns the same fields or raises the
    rejection with its message.
    """
    try:
        # Maps become lists of pairs, so that a repeated key stays visible.
        pairs = msgpack.unpackb(value, raw=False, object_pairs_hook=_Pairs)
    except (msgpack.UnpackException, ValueError):
        return None
    if len(pairs) > MAX_EVENT_KEYS:
        return None
    fields: dict = {}
    seen: set[str | bytes] = set()
    for key, field_value in pairs:
        if not isinstance(key, (str, bytes)) or key in seen:
            return None
        seen.add(key)
        if key in SCALAR_FIELDS:
            if isinstance(field_value, list):
                return None
            fields[key] = field_value
        elif key in LIST_FIELDS:
            if isinstance(field_value, _Pairs) or (
                isinstance(field_value, list)
                and (
                    len(field_value) > max_list_length
                    or any(isinstance(entry, list) for entry in field_value)
                )
            ):
                return None
            fields[key] = field_value
    return fields


class _ValueReader:
    """A cursor over one event value that unpacks only the bounded parts."""

    def __init__(self, value: bytes, max_list_length: int) -> None:
        self.value = value
        self.max_list_length = max_list_length
        self.unpacker = _unpacker(len(value))
        self.unpacker.feed(value)

    def check_end(self) -> None:
        extra = len(self.value) - self.unpacker.tell()
        if extra:
            unit = "byte" if extra == 1 else "bytes"
            raise _invalid_msgpack(self.value, f"{extra} {unit} after the first object")

    def reject_non_map(self) -> None:
        """Check that the value is one msgpack object and raise `not_a_map` naming its type."""
        decoded = self.read_scalar_or_skip()
        self.check_end()
        raise InvalidEventError(
            "not_a_map",
            f"value is a msgpack {type_name(decoded)}, not a map: send a map with user, item "
            "and ts",
        )

    def read_map(self) -> dict:
        # The keys are unpacked one by one in Python, so that a repeated ignored key is found
        # too. `MAX_EVENT_KEYS` bounds their count.
        count = self.unpacker.read_map_header()
        if count > MAX_EVENT_KEYS:
            raise InvalidEventError(
                "invalid_msgpack",
                f"map has {count} keys, more than the {MAX_EVENT_KEYS} an event may have: send "
                "the event's fields without the rest",
            )
        fields: dict = {}
        seen: set[str | bytes] = set()
        for _ in range(count):
            key = self.read_key()
            if key in seen:
                raise InvalidEventError(
                    "invalid_msgpack",
                    f"map key {short_repr(key)} appears more than once: send each field once, "
                    "because msgpack parsers differ in which of the values they keep",
                )
            seen.add(key)
            if key in SCALAR_FIELDS:
                fields[key] = self.read_scalar_or_skip()
            elif key in LIST_FIELDS:
                fields[key] = self.read_list()
            else:
                self.unpacker.skip()
        return fields

    def read_key(self) -> str | bytes:
        if self.first_byte() in _KEY_FIRST_BYTES:
            return self.unpacker.unpack()
        key = self.read_scalar_or_skip()
        raise InvalidEventError(
            "invalid_msgpack",
            f"map key {short_repr(key)} has type {type_name(key)}: send a msgpack map with "
            "string keys",
        )

    def first_byte(self) -> int:
        position = self.unpacker.tell()
        if position >= len(self.value):
            raise msgpack.OutOfData("the value ends before its next msgpack object")
        return self.value[position]

    def read_scalar_or_skip(self) -> Any:
        """Unpack the next object if it is a scalar, else skip it as a `SkippedContainer`."""
        kind = _container_kind(self.first_byte())
        if kind is None:
            return self.unpacker.unpack()
        start = self.unpacker.tell()
        self.unpacker.skip()
        return SkippedContainer(kind, self.unpacker.tell() - start)

    def read_list(self) -> Any:
        """Unpack the next object as a list of scalars, with containers in it skipped.

        An array of more than `max_list_length` entries becomes a `SkippedContainer` with its
        length, so validation can name the count without this unpacking the entries.
        """
        if _container_kind(self.first_byte()) != "list":
            return self.read_scalar_or_skip()
        # The skip checks the whole array first, and a second reader then walks its entries.
        start = self.unpacker.tell()
        self.unpacker.skip()
        end = self.unpacker.tell()
        entries = _ValueReader(self.value[start:end], self.max_list_length)
        count = entries.unpacker.read_array_header()
        if count > self.max_list_length:
            return SkippedContainer("list", end - start, count)
        return [entries.read_scalar_or_skip() for _ in range(count)]
