"""The msgpack codec of user states: round trips, the previous schemas, and invalid input."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from statestore import SchemaVersionError, StateCodecError, UserState
from statestore.codec import SCHEMA_VERSION, decode_state, decode_timer_fields, encode_state
from tests.statestore.helpers import EMBEDDING_DIM, make_state

# A schema-1 record written by the schema-1 encoder, frozen so that schema-1 stores stay readable:
# gru_state [[0.5, -1.0]], session_items [7, 42], session_sum [1.5, 2.0], session_length 2,
# session_start 1_700_000_000.0, last_ts 1_700_000_090.25, session_count 4,
# last_embedding [0.25, -0.75], partition 3.
SCHEMA_1_BLOB = bytes.fromhex(
    "9a0103cb41d954fc5690000002cb41d954fc400000000493a33c6634920102c4080000003f000080bf93a33c"
    "69349102c408070000002a00000093a33c66349102c4080000c03f0000004093a33c66349102c4080000803e"
    "000040bf"
)


def _packed(array: np.ndarray) -> list:
    return [array.dtype.str, list(array.shape), array.tobytes()]


def _generic_pack(blob: bytes) -> bytes:
    """Re-encode a record with msgpack's own, smallest integer and float widths."""
    return msgpack.packb(msgpack.unpackb(blob), use_bin_type=True)


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
    state = make_state(session_length=3)
    record = msgpack.unpackb(encode_state(state))
    assert record[0] == SCHEMA_VERSION == 2
    assert record[6:10] == [2, 8, EMBEDDING_DIM, True]
    floats = b"".join(
        array.astype("<f4").tobytes()
        for array in (state.gru_state, state.session_sum, state.last_embedding)
    )
    assert record[10] == floats
    assert record[11] == state.session_items.astype("<i4").tobytes()


def test_record_without_embedding_omits_its_floats() -> None:
    state = make_state(with_embedding=False)
    record = msgpack.unpackb(encode_state(state))
    assert record[9] is False
    assert len(record[10]) == 4 * (2 * 8 + EMBEDDING_DIM)


def test_decoded_arrays_do_not_alias_the_record() -> None:
    state = make_state(session_length=4)
    buffer = bytearray(encode_state(state))
    decoded = decode_state(memoryview(buffer))
    buffer[:] = bytes(len(buffer))  # what LMDB may do to a page after the transaction
    assert decoded.same_as(state)
    for array in (decoded.gru_state, decoded.session_items, decoded.session_sum):
        assert array.flags.writeable


def test_generic_msgpack_record_decodes_alike() -> None:
    state = make_state(session_length=2, last_ts=55.5, partition=4)
    blob = _generic_pack(encode_state(state))
    assert blob != encode_state(state)  # smaller integer widths than encode_state writes
    assert decode_state(blob).same_as(state)
    assert decode_timer_fields(blob) == (4, 55.5, 2)


def test_schema_one_frozen_record_decodes() -> None:
    state = decode_state(SCHEMA_1_BLOB)
    np.testing.assert_array_equal(state.gru_state, np.array([[0.5, -1.0]], np.float32))
    assert state.gru_state.dtype == np.float32
    np.testing.assert_array_equal(state.session_items, np.array([7, 42], np.int32))
    assert state.session_items.dtype == np.int32
    np.testing.assert_array_equal(state.session_sum, np.array([1.5, 2.0], np.float32))
    assert state.last_embedding is not None
    np.testing.assert_array_equal(state.last_embedding, np.array([0.25, -0.75], np.float32))
    assert state.session_length == 2
    assert state.session_start == 1_700_000_000.0
    assert state.last_ts == 1_700_000_090.25
    assert state.session_count == 4
    assert state.partition == 3
    state.gru_state[0, 0] = 9.0  # writable
    assert decode_timer_fields(SCHEMA_1_BLOB) == (3, 1_700_000_090.25, 2)


def test_schema_one_state_upgrades_on_encode() -> None:
    state = decode_state(SCHEMA_1_BLOB)
    blob = encode_state(state)
    assert msgpack.unpackb(blob)[0] == SCHEMA_VERSION
    assert decode_state(blob).same_as(state)


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
    assert len(upgraded) == 12


def test_timer_fields_match_full_decode() -> None:
    state = make_state(session_length=2, last_ts=123.456, partition=9)
    assert decode_timer_fields(encode_state(state)) == (9, 123.456, 2)


@pytest.mark.parametrize(
    ("partition", "last_ts", "session_length"),
    [(-1, -5.25, 0), (0, 0.0, 1), (2**31 - 1, 1e18, 2**40)],
)
def test_timer_fields_of_memoryview(partition: int, last_ts: float, session_length: int) -> None:
    state = make_state(partition=partition, last_ts=last_ts)
    state.session_length = session_length
    fields = decode_timer_fields(memoryview(encode_state(state)))
    assert fields == (partition, last_ts, session_length)
    assert type(fields.partition) is int
    assert type(fields.session_length) is int


def test_timer_fields_skip_the_arrays() -> None:
    blob = bytearray(encode_state(make_state(session_length=2, last_ts=7.5, partition=1)))
    layers_offset = 48  # after 2 + 5 * 9 header bytes and the uint32 type byte of G
    assert blob[layers_offset : layers_offset + 4] == (2).to_bytes(4, "big")
    blob[layers_offset : layers_offset + 4] = (3).to_bytes(4, "big")
    assert decode_timer_fields(bytes(blob)) == (1, 7.5, 2)
    with pytest.raises(StateCodecError, match="G=3"):
        decode_state(bytes(blob))


def test_truncated_record_raises_codec_error() -> None:
    blob = encode_state(make_state())
    for size in (0, 1, 20, 40, len(blob) - 1):
        with pytest.raises(StateCodecError, match=r"not valid msgpack|expected an array"):
            decode_state(blob[:size])
        with pytest.raises(StateCodecError, match=r"not valid msgpack|expected an array"):
            decode_timer_fields(blob[:size])


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


def test_corrupt_schema_one_array_raises_codec_error() -> None:
    record = msgpack.unpackb(SCHEMA_1_BLOB)
    record[6][2] = record[6][2][:-4]  # gru_state bytes one float short
    with pytest.raises(StateCodecError, match="gru_state"):
        decode_state(msgpack.packb(record, use_bin_type=True))


def _corrupt(index: int, value: object) -> bytes:
    record = msgpack.unpackb(encode_state(make_state(session_length=3)))
    record[index] = value(record[index]) if callable(value) else value
    return msgpack.packb(record, use_bin_type=True)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_corrupt(10, lambda floats: floats[:-4]), "float buffer of .* bytes"),
        (_corrupt(6, 3), "float buffer of .* bytes, but G=3"),
        (_corrupt(8, EMBEDDING_DIM + 1), "float buffer of .* bytes, but .* D=7"),
        (_corrupt(9, False), "last_embedding absent"),
        (_corrupt(11, lambda items: items[:-1]), "session_items buffer of 11 bytes"),
        (_corrupt(7, -8), "expected sizes >= 0"),
        (_corrupt(6, "2"), "expected sizes >= 0"),
        (_corrupt(9, 1), "expected sizes >= 0 and a boolean"),
        (_corrupt(10, [0.0] * 8), "expected raw bytes"),
    ],
    ids=[
        "truncated-floats",
        "wrong-layers",
        "wrong-embedding-size",
        "embedding-flag-cleared",
        "truncated-items",
        "negative-size",
        "size-not-an-integer",
        "flag-not-boolean",
        "floats-as-list",
    ],
)
def test_corrupt_schema_two_record_raises_codec_error(blob: bytes, message: str) -> None:
    with pytest.raises(StateCodecError, match=message):
        decode_state(blob)


def test_scalar_beyond_int64_is_rejected() -> None:
    state = make_state()
    state.session_count = 2**63
    with pytest.raises(StateCodecError, match="session_count 9223372036854775808"):
        encode_state(state)


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
