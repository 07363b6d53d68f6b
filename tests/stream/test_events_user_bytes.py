"""User ids too long in UTF-8 for the state store's LMDB keys: decoder and replay reject them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lmdb
import msgpack
import pytest

from statestore import StateStore, StoreConfig, StoreConfigError
from statestore.keys import TIMER_PREFIX_SIZE
from stream.cli import main
from stream.events import MAX_USER_ID_BYTES, DeadLetter, Event, EventConfig, Position, decode_event
from tests.statestore.helpers import make_state

ROW_OF = {str(row): row for row in range(10)}
POSITION = Position("interactions", 0, 5)
TS = 1_700_000_000

# 256 two-byte characters: within the 256-character limit, but 512 bytes in UTF-8.
LONG_TWO_BYTE_USER = "é" * 256
# 125 four-byte characters: 500 bytes in UTF-8.
LONG_FOUR_BYTE_USER = "😀" * 125
# 499 bytes in UTF-8 (249 two-byte characters and one ASCII character), the maximum accepted.
USER_OF_MAX_BYTES = "é" * 249 + "a"
# 500 bytes in UTF-8, one byte more than accepted.
USER_OVER_MAX_BYTES = "é" * 250


def decode_user(user: str, config: EventConfig | None = None) -> Event | DeadLetter:
    value = msgpack.packb({"user": user, "item": "1", "ts": TS}, use_bin_type=True)
    return decode_event(
        user.encode("utf-8"), value, POSITION, ROW_OF, config or EventConfig(), now=TS
    )


def test_user_byte_limit_matches_lmdb(tmp_path: Path) -> None:
    environment = lmdb.open(str(tmp_path / "lmdb"), map_size=1 << 20)
    try:
        max_key_size = environment.max_key_size()
    finally:
        environment.close()

    assert max_key_size - TIMER_PREFIX_SIZE == MAX_USER_ID_BYTES
    assert len(USER_OF_MAX_BYTES.encode("utf-8")) == MAX_USER_ID_BYTES
    assert len(USER_OVER_MAX_BYTES.encode("utf-8")) == MAX_USER_ID_BYTES + 1


def test_store_takes_user_of_max_bytes(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "state", map_size=1 << 20, sync=False)
    with StateStore(config) as store:
        store.commit({USER_OF_MAX_BYTES: make_state()})
        assert USER_OF_MAX_BYTES in store.read([USER_OF_MAX_BYTES])

        with pytest.raises(StoreConfigError, match="500 bytes in UTF-8"):
            store.commit({USER_OVER_MAX_BYTES: make_state()})


def test_two_byte_user_of_512_bytes_rejected() -> None:
    result = decode_user(LONG_TWO_BYTE_USER)

    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_user"
    assert "512 bytes in UTF-8" in result.message
    assert f"maximum of {MAX_USER_ID_BYTES} bytes" in result.message
    assert f"send a user id of at most {MAX_USER_ID_BYTES} bytes" in result.message


def test_four_byte_user_of_500_bytes_rejected() -> None:
    result = decode_user(LONG_FOUR_BYTE_USER)

    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_user"
    assert "500 bytes in UTF-8" in result.message


@pytest.mark.parametrize(
    ("user", "accepted"),
    [
        (USER_OF_MAX_BYTES, True),
        (USER_OVER_MAX_BYTES, False),
        ("a" * MAX_USER_ID_BYTES, True),
        ("a" * (MAX_USER_ID_BYTES + 1), False),
    ],
    ids=["499_bytes_two_byte", "500_bytes_two_byte", "499_bytes_ascii", "500_bytes_ascii"],
)
def test_user_byte_limit_boundary(user: str, accepted: bool) -> None:
    # The character limit is raised, so that only the byte limit decides for ASCII ids.
    result = decode_user(user, EventConfig(max_id_length=1000))

    if accepted:
        assert isinstance(result, Event)
        assert result.user == user
    else:
        assert isinstance(result, DeadLetter)
        assert result.reason == "invalid_user"


def test_replay_into_store_rejects_long_user(
    onnx_bundle_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = ["u1", LONG_TWO_BYTE_USER, LONG_FOUR_BYTE_USER, USER_OVER_MAX_BYTES, USER_OF_MAX_BYTES]
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"user": user, "item": 3, "ts": TS + index}) for index, user in enumerate(users)
    ]
    events.write_text("\n".join(lines) + "\n")
    state_dir = tmp_path / "state"
    caplog.set_level(logging.DEBUG)

    code = main(
        [
            "-v",
            "replay",
            "--events",
            str(events),
            "--bundle",
            str(onnx_bundle_dir),
            "--state-dir",
            str(state_dir),
        ]
    )

    assert code == 0
    rejections = [
        record.getMessage() for record in caplog.records if "rejected" in record.getMessage()
    ]
    assert len(rejections) == 3
    for line, rejection in zip((2, 3, 4), rejections, strict=True):
        assert rejection.startswith(f"events.jsonl line {line} rejected (invalid_user)")
    with StateStore(StoreConfig(path=state_dir, writer_lock="none")) as store:
        stored = store.read(users)
    assert set(stored) == {"u1", USER_OF_MAX_BYTES}
