"""The msgpack encoding of `UserState` records, with a schema version in every record.

A record is a msgpack array whose first element is the schema version. Arrays are stored as
`[dtype, shape, raw bytes]` with a little-endian dtype string (`"<f4"`, `"<i4"`), never as lists
of numbers, so a 4 x 128 GRU state costs 2 KiB plus a few bytes of framing.

Schema 1 is the current layout. The fields that the store needs for its timer index come first:
    [1, partition, last_ts, session_length, session_start, session_count,
     gru_state, session_items, session_sum, last_embedding or nil]
Schema 0 is the layout from before `last_embedding` and `partition` existed, and is only read:
    [0, last_ts, session_length, session_start, session_count,
     gru_state, session_items, session_sum]
A schema-0 record decodes with `last_embedding=None` and `partition=-1`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import msgpack
import numpy as np

from statestore.errors import SchemaVersionError, StateCodecError
from statestore.state import REPLAY_PARTITION, UserState

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_FLOAT32 = np.dtype("<f4")
_INT32 = np.dtype("<i4")
_SCHEMA_LENGTHS = {0: 8, 1: 10}
# Little-endian names of the dtypes that `_check_array` produces, by numpy type character.
_DTYPE_NAMES = {_FLOAT32.char: _FLOAT32.str, _INT32.char: _INT32.str}
_DTYPES = {_FLOAT32.str: _FLOAT32, _INT32.str: _INT32}


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
    last_embedding = None
    if state.last_embedding is not None:
        last_embedding = _check_array("last_embedding", state.last_embedding, _FLOAT32, ndim=1)
        if last_embedding.shape != session_sum.shape:
            raise StateCodecError(
                f"last_embedding has shape {last_embedding.shape} but session_sum has "
                f"{session_sum.shape}: both must be [D] with the bundle's embedding size"
            )
    record = [
        SCHEMA_VERSION,
        int(state.partition),
        float(state.last_ts),
        int(state.session_length),
        float(state.session_start),
        int(state.session_count),
        _pack_array(gru_state),
        _pack_array(session_items),
        _pack_array(session_sum),
        None if last_embedding is None else _pack_array(last_embedding),
    ]
    return msgpack.packb(record, use_bin_type=True)


def decode_state(blob: bytes) -> UserState:
    """Decode a record of any supported schema version into a `UserState` with writable arrays."""
    record = _unpack_record(blob)
    if record[0] == 0:
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


def decode_timer_fields(blob: bytes) -> TimerFields:
    """Decode only the partition, last event time and session length of a stored record."""
    record = _unpack_record(blob)
    if record[0] == 0:
        return TimerFields(REPLAY_PARTITION, float(record[1]), int(record[2]))
    return TimerFields(int(record[1]), float(record[2]), int(record[3]))


def _unpack_record(blob: bytes) -> list[Any]:
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


def _check_array(name: str, value: Any, dtype: np.dtype, ndim: int) -> np.ndarray:
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


def _pack_array(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    # msgpack writes the tuples as arrays.
    return _DTYPE_NAMES[array.dtype.char], array.shape, array.tobytes()


def _unpack_array(name: str, packed: Any) -> np.ndarray:
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
