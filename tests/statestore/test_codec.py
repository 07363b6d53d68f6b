"""The msgpack codec of user states: round trips, the previous schema, and invalid input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from statestore import SchemaVersionError, StateCodecError, UserState
from statestore.codec import SCHEMA_VERSION, decode_state, decode_timer_fields, encode_state
from tests.statestore.helpers import EMBEDDING_DIM, make_state


def _packed(array: np.ndarray) -> list:
    return [array.dtype.str, list(array.shape), array.tobytes()]


def test_round_trip_keeps_every_field() -> None:
    state = make_state(seed=7, session_length=4, last_ts=1_712_345_678.123456, partition=5)
    decoded = decode_state(encode_state(state))
    np.testing.assert_array_equal(decoded.gru_state, state.gru_state)
    assert decoded.gru_state.dtype == np.float32
    np.testing.assert_array_equal(decoded.session_items, state.session_items)
    assert decoded.session_items.dtype == np.int32
    np.testing.assert_array_equal(decoded.session_sum, state.session_sum)
    assert decoded.session_sum.dtype == np.float32
    assert decoded.session_length == 4
    assert decoded.session_start == state.session_start
    assert decoded.last_ts == 1_712_345_678.123456
    assert decoded.session_count == 8
    assert decoded.last_embedding is not None
    np.testing.assert_array_equal(decoded.last_embedding, state.last_embedding)
    assert decoded.partition == 5
    assert decoded.same_as(state)


def test_round_trip_without_embedding_or_session() -> None:
    state = make_state(session_length=0, with_embedding=False, partition=-1)
    decoded = decode_state(encode_state(state))
    assert decoded.last_embedding is None
    assert decoded.session_items.shape == (0,)
    assert decoded.partition == -1
    assert decoded.same_as(state)


def test_decoded_arrays_are_writable() -> None:
    decoded = decode_state(encode_state(make_state()))
    decoded.session_sum += 1.0
    decoded.gru_state[0, 0] = 3.0
    assert decoded.gru_state[0, 0] == 3.0


def test_arrays_are_raw_little_endian_bytes() -> None:
    state = make_state()
    record = msgpack.unpackb(encode_state(state))
    assert record[0] == SCHEMA_VERSION
    dtype, shape, raw = record[6]
    assert dtype == "<f4"
    assert shape == [2, 8]
    assert raw == state.gru_state.astype("<f4").tobytes()


def test_big_endian_and_float64_input_encode_as_float32() -> None:
    state = make_state()
    state.gru_state = state.gru_state.astype(">f4")
    state.session_sum = state.session_sum.astype(np.float64)
    decoded = decode_state(encode_state(state))
    assert decoded.gru_state.dtype == np.float32
    np.testing.assert_array_equal(decoded.gru_state, state.gru_state)
    np.testing.assert_array_equal(decoded.session_sum, state.session_sum.astype(np.float32))


def test_schema_zero_record_decodes_with_defaults() -> None:
    gru_state = np.arange(16, dtype="<f4").reshape(2, 8)
    items = np.array([4, 9, 2], dtype="<i4")
    total = np.linspace(0, 1, EMBEDDING_DIM, dtype="<f4")
    blob = msgpack.packb(
        [
            0,
            1_700_000_100.5,
            3,
            1_700_000_000.0,
            12,
            _packed(gru_state),
            _packed(items),
            _packed(total),
        ],
        use_bin_type=True,
    )
    state = decode_state(blob)
    np.testing.assert_array_equal(state.gru_state, gru_state)
    np.testing.assert_array_equal(state.session_items, items)
    np.testing.assert_array_equal(state.session_sum, total)
    assert state.session_length == 3
    assert state.session_start == 1_700_000_000.0
    assert state.last_ts == 1_700_000_100.5
    assert state.session_count == 12
    assert state.last_embedding is None
    assert state.partition == -1
    assert decode_timer_fields(blob) == (-1, 1_700_000_100.5, 3)


def test_schema_zero_state_upgrades_on_encode() -> None:
    blob = msgpack.packb(
        [
            0,
            5.0,
            1,
            4.0,
            1,
            _packed(np.zeros((2, 8), "<f4")),
            _packed(np.array([1], "<i4")),
            _packed(np.zeros(EMBEDDING_DIM, "<f4")),
        ],
        use_bin_type=True,
    )
    upgraded = msgpack.unpackb(encode_state(decode_state(blob)))
    assert upgraded[0] == SCHEMA_VERSION
    assert len(upgraded) == 10


def test_timer_fields_match_full_decode() -> None:
    state = make_state(session_length=2, last_ts=123.456, partition=9)
    assert decode_timer_fields(encode_state(state)) == (9, 123.456, 2)


def test_newer_schema_raises_with_upgrade_hint() -> None:
    blob = msgpack.packb([SCHEMA_VERSION + 1, 0, 0.0])
    with pytest.raises(SchemaVersionError, match="upgrade hiertcn"):
        decode_state(blob)


@pytest.mark.parametrize(
    "blob",
    [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, 2, 3]), msgpack.packb([])],
    ids=["invalid-msgpack", "map", "short-record", "empty"],
)
def test_corrupt_record_raises_codec_error(blob: bytes) -> None:
    with pytest.raises(StateCodecError):
        decode_state(blob)


def test_corrupt_array_raises_codec_error() -> None:
    record = msgpack.unpackb(encode_state(make_state()))
    record[6][2] = record[6][2][:-4]  # gru_state bytes one float short
    with pytest.raises(StateCodecError, match="gru_state"):
        decode_state(msgpack.packb(record, use_bin_type=True))


def test_integer_gru_state_is_rejected() -> None:
    state = make_state()
    state.gru_state = np.zeros((2, 8), dtype=np.int64)
    with pytest.raises(StateCodecError, match="gru_state has dtype int64"):
        encode_state(state)


def test_wrong_rank_is_rejected() -> None:
    state = make_state()
    state.session_sum = np.zeros((2, EMBEDDING_DIM), dtype=np.float32)
    with pytest.raises(StateCodecError, match="session_sum has shape"):
        encode_state(state)


def test_embedding_size_mismatch_is_rejected() -> None:
    state = make_state()
    state.last_embedding = np.zeros(EMBEDDING_DIM + 1, dtype=np.float32)
    with pytest.raises(StateCodecError, match="last_embedding has shape"):
        encode_state(state)


def test_new_state_starts_empty() -> None:
    start = np.ones((2, 8), dtype=np.float64)
    state = UserState.new(start, EMBEDDING_DIM, partition=4)
    assert state.gru_state.dtype == np.float32
    assert state.session_items.shape == (0,)
    assert state.session_sum.shape == (EMBEDDING_DIM,)
    assert state.session_length == 0
    assert state.last_embedding is None
    assert state.partition == 4
