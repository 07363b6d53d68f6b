"""The msgpack encoding of `UserState` records, with a schema version in every record.

A record is a msgpack array whose first element is the schema version. Arrays are stored as raw
little-endian bytes, never as lists of numbers. Shape letters are those of `statestore.state`.

Schema 2 is the current layout. The fields that the store needs for its timer index come first:
    [2, partition, last_ts, session_length, session_start, session_count, G, H, D,
     has_last_embedding, floats, session_items]
`floats` is one float32 buffer that contains `gru_state` (G * H values, row-major), then
`session_sum` (D values), then `last_embedding` (D values) when `has_last_embedding` is true.
`session_items` is an int32 buffer of n values. `encode_state` always uses the same msgpack
types (int64 for partition and counts, float64 for times, uint32 for G, H and D, bin32 for the
buffers), so the timer fields and the buffer lengths sit at fixed byte offsets, and
`decode_timer_fields` reads them with `struct` instead of parsing the record. `decode_state`
parses with msgpack, so a schema-2 record with other integer widths (from another msgpack
writer) is read too.

Schema 1 stores each array as `[dtype, shape, raw bytes]` with a little-endian dtype string
(`"<f4"`, `"<i4"`), and is only read:
    [1, partition, last_ts, session_length, session_start, session_count,
     gru_state, session_items, session_sum, last_embedding or nil]
Schema 0 is the layout from before `last_embedding` and `partition` existed, and is only read:
    [0, last_ts, session_length, session_start, session_count,
     gru_state, session_items, session_sum]
A schema-0 record decodes with `last_embedding=None` and `partition=-1`.

Decoded arrays are writable copies in native byte order. They never share memory with the
record, so a record read from an LMDB buffer may be decoded inside its transaction.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, NamedTuple

import msgpack
import numpy as np

from statestore.errors import SchemaVersionError, StateCodecError
from statestore.state import REPLAY_PARTITION, UserState

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_FLOAT32 = np.dtype("<f4")
_INT32 = np.dtype("<i4")
_SCHEMA_LENGTHS = {0: 8, 1: 10, 2: 12}
_DTYPES = {_FLOAT32.str: _FLOAT32, _INT32.str: _INT32}

# msgpack type bytes that `encode_state` writes (msgpack spec: fixarray of 12, int64, float64,
# uint32, true, false, bin32).
_FIXARRAY_12 = 0x9C
_INT64 = 0xD3
_FLOAT64 = 0xCB
_UINT32 = 0xCE
_TRUE = 0xC3
_FALSE = 0xC2
_BIN32 = 0xC6
# The schema-2 header up to `has_last_embedding`, as `encode_state` writes it. msgpack numbers
# are big-endian.
_HEADER = struct.Struct(">BB" + "BqBdBqBdBq" + "BIBIBI" + "B")
_BIN32_LENGTH = struct.Struct(">BI")
# The array header, the schema version and the int64 type byte of `partition`.
_TIMER_PREFIX = bytes([_FIXARRAY_12, SCHEMA_VERSION, _INT64])
# `_TIMER_PREFIX`, `partition`, then `last_ts` and `session_length` with their type bytes, then
# the rest of the header skipped, and the type byte and length of the float buffer.
_TIMER_FIELDS = struct.Struct(f">3sqBdBq{_HEADER.size - struct.calcsize('>3sqBdBq')}xBI")


class TimerFields(NamedTuple):
    """The fields of a stored state that place it in the timer index."""

    partition: int
    last_ts: float
    session_length: int


def encode_state(state: UserState) -> bytes:
    """Encode `state` in the current schema; raise `StateCodecError` on a bad dtype or shape."""
    gru_state = _check_array("gru_state", state.gru_state, _FLOAT32, ndim=2)
    session_items = _check_array("session_items", state.session_items, _INT32, ndim=1)
    session_sum = _check_array("session_sum", state.session_sum, _FLOAT32, ndim=1)
    parts = [gru_state.tobytes(), session_sum.tobytes()]
    if state.last_embedding is not None:
        last_embedding = _check_array("last_embedding", state.last_embedding, _FLOAT32, ndim=1)
        if last_embedding.shape != session_sum.shape:
            raise StateCodecError(
                f"last_embedding has shape {last_embedding.shape} but session_sum has "
                f"{session_sum.shape}: both must be [D] with the bundle's embedding size"
            )
        parts.append(last_embedding.tobytes())
    floats = b"".join(parts)
    items = session_items.tobytes()
    layers, hidden_size = gru_state.shape
    try:
        header = _HEADER.pack(
            _FIXARRAY_12,
            SCHEMA_VERSION,
            _INT64,
            int(state.partition),
            _FLOAT64,
            float(state.last_ts),
            _INT64,
            int(state.session_length),
            _FLOAT64,
            float(state.session_start),
            _INT64,
            int(state.session_count),
            _UINT32,
            layers,
            _UINT32,
            hidden_size,
            _UINT32,
            session_sum.shape[0],
            _FALSE if state.last_embedding is None else _TRUE,
        )
    except struct.error as error:
        raise StateCodecError(
            f"a scalar field of the state does not fit in int64 ({error}): partition "
            f"{state.partition}, session_length {state.session_length}, session_count "
            f"{state.session_count}; pass values in the int64 range"
        ) from error
    return b"".join(
        (
            header,
            _BIN32_LENGTH.pack(_BIN32, len(floats)),
            floats,
            _BIN32_LENGTH.pack(_BIN32, len(items)),
            items,
        )
    )


def decode_state(blob: bytes | memoryview) -> UserState:
    """Decode a record of any supported schema version into a `UserState` with writable arrays.

    `blob` may be a buffer that is valid only inside an LMDB transaction, because nothing in the
    result refers to it.
    """
    record = _unpack_record(blob)
    version = record[0]
    if version == 2:
        return _decode_schema_2(record)
    if version == 0:
        _, last_ts, length, start, count, gru_state, items, total = record
        last_embedding = None
        partition = REPLAY_PARTITION
    else:
        _, partition, last_ts, length, start, count, gru_state, items, total, last = record
        last_embedding = None if last is None else _unpack_array("last_embedding", last)
    return UserState(
        gru_state=_unpack_array("gru_state", gru_state),
        session_items=_unpack_array("session_items", items),
        session_sum=_unpack_array("session_sum", total),
        session_length=int(length),
        session_start=float(start),
        last_ts=float(last_ts),
        session_count=int(count),
        last_embedding=last_embedding,
        partition=int(partition),
    )


def decode_timer_fields(blob: bytes | memoryview) -> TimerFields:
    """Decode only the partition, last event time and session length of a stored record.

    A schema-2 record written by `encode_state` is read at fixed offsets, without parsing or
    copying its arrays. Other records go through a full msgpack parse.
    """
    fields = _read_fixed_timer_fields(blob)
    if fields is not None:
        return fields
    record = _unpack_record(blob)
    if record[0] == 0:
        return TimerFields(REPLAY_PARTITION, float(record[1]), int(record[2]))
    return TimerFields(int(record[1]), float(record[2]), int(record[3]))


def _read_fixed_timer_fields(blob: bytes | memoryview) -> TimerFields | None:
    """Read the timer fields at the offsets where `encode_state` writes them.

    Returns None unless the type bytes of the timer fields and of both buffers are those that
    `encode_state` writes, and the buffer lengths add up to the size of `blob`. The msgpack parse
    then reads other records and raises on truncated ones.
    """
    try:
        (
            prefix,
            partition,
            last_ts_type,
            last_ts,
            length_type,
            length,
            floats_type,
            floats_size,
        ) = _TIMER_FIELDS.unpack_from(blob)
        items_offset = _HEADER.size + _BIN32_LENGTH.size + floats_size
        items_type, items_size = _BIN32_LENGTH.unpack_from(blob, items_offset)
    except struct.error:
        return None  # shorter than the fixed layout
    if (
        prefix == _TIMER_PREFIX
        and last_ts_type == _FLOAT64
        and length_type == _INT64
        and floats_type == _BIN32
        and items_type == _BIN32
        and items_offset + _BIN32_LENGTH.size + items_size == len(blob)
    ):
        return TimerFields(partition, last_ts, length)
    return None


def _unpack_record(blob: bytes | memoryview) -> list[Any]:
    try:
        record = msgpack.unpackb(blob, raw=False, use_list=True)
    except (ValueError, msgpack.UnpackException) as error:
        raise StateCodecError(f"state record is not valid msgpack: {error}") from error
    if not isinstance(record, list) or not record or not isinstance(record[0], int):
        raise StateCodecError(
            f"state record is a {type(record).__name__}, expected an array that starts with "
            "the schema version"
        )
    version = record[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"state record has schema version {version}, but this code reads up to "
            f"{SCHEMA_VERSION}: upgrade hiertcn before opening this store"
        )
    expected = _SCHEMA_LENGTHS.get(version)
    if expected is None or len(record) != expected:
        raise StateCodecError(
            f"state record of schema version {version} has {len(record)} fields, "
            f"expected {expected}: the record is corrupt"
        )
    return record


def _decode_schema_2(record: list[Any]) -> UserState:
    _check_schema_2(record)
    _, partition, last_ts, length, start, count, layers, hidden, dim, has_last, floats, items = (
        record
    )
    gru_size = layers * hidden
    # One copy of the floats in native byte order, and the float arrays of the state are views
    # into it. msgpack returns the buffers as read-only bytes, hence the copies.
    values = np.frombuffer(floats, dtype=_FLOAT32)
    values = values.copy() if _FLOAT32.isnative else values.astype(np.float32)
    return UserState(
        gru_state=values[:gru_size].reshape(layers, hidden),
        session_items=np.frombuffer(items, dtype=_INT32).astype(np.int32),  # always a copy
        session_sum=values[gru_size : gru_size + dim],
        session_length=int(length),
        session_start=float(start),
        last_ts=float(last_ts),
        session_count=int(count),
        last_embedding=values[gru_size + dim :] if has_last else None,
        partition=int(partition),
    )


def _check_schema_2(record: list[Any]) -> None:
    """Raise `StateCodecError` unless the sizes and buffers of a schema-2 record agree."""
    _, _, _, _, _, _, layers, hidden, dim, has_last, floats, items = record
    if type(floats) is not bytes or type(items) is not bytes:
        raise StateCodecError(
            f"state record has a {type(floats).__name__} float buffer and a "
            f"{type(items).__name__} session_items buffer, expected raw bytes: the record is "
            "corrupt"
        )
    shape = (layers, hidden, dim)
    if (
        type(layers) is not int
        or type(hidden) is not int
        or type(dim) is not int
        or min(shape) < 0
        or type(has_last) is not bool
    ):
        raise StateCodecError(
            f"state record has (G, H, D) = {shape} and has_last_embedding = {has_last!r}, "
            "expected sizes >= 0 and a boolean: the record is corrupt"
        )
    float_count = layers * hidden + dim * (2 if has_last else 1)
    if len(floats) != float_count * _FLOAT32.itemsize:
        raise StateCodecError(
            f"state record has a float buffer of {len(floats)} bytes, but G={layers}, "
            f"H={hidden}, D={dim} and last_embedding {'present' if has_last else 'absent'} "
            f"need {float_count * _FLOAT32.itemsize}: the record is truncated or corrupt"
        )
    if len(items) % _INT32.itemsize:
        raise StateCodecError(
            f"state record has a session_items buffer of {len(items)} bytes, not a multiple of "
            f"{_INT32.itemsize}: the record is truncated or corrupt"
        )


def _check_array(name: str, value: Any, dtype: np.dtype, ndim: int) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype == dtype and value.ndim == ndim:
        return value  # the common case: `tobytes` writes C order whatever the strides
    array = np.asarray(value)
    if array.ndim != ndim:
        raise StateCodecError(
            f"{name} has shape {array.shape}, expected {ndim} dimensions (see UserState)"
        )
    if array.dtype.kind != dtype.kind:
        raise StateCodecError(
            f"{name} has dtype {array.dtype}, expected {dtype.name}: convert it with "
            f"astype(numpy.{dtype.name})"
        )
    return np.ascontiguousarray(array, dtype=dtype)


def _unpack_array(name: str, packed: Any) -> np.ndarray:
    """Decode a schema-0 or schema-1 array `[dtype, shape, raw bytes]` into a writable copy."""
    try:
        dtype_name, shape, raw = packed
        dtype = _DTYPES.get(dtype_name) or np.dtype(dtype_name)
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as error:
        raise StateCodecError(f"{name} in the state record is corrupt: {error}") from error
    # A writable copy in native byte order, because the buffer of `raw` is read-only.
    if dtype.isnative:
        return array.copy()
    return array.astype(dtype.newbyteorder("="))
