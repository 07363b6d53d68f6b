"""Replay positions: the optional `ReplayProgress` of a `PartitionPosition`, stored and exported."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from statestore import (
    REPLAY_PARTITION,
    PartitionPosition,
    ReplayProgress,
    StateCodecError,
    StateStore,
    StoreConfig,
)
from statestore.keys import decode_position, encode_position
from stream.cli import main

TOPIC = "replay:/logs/events.jsonl"
PROGRESS = ReplayProgress(order="time", output="/out/recs.jsonl", output_bytes=4096)
POSITION = PartitionPosition(120, 1_700_000_000.5, PROGRESS)
POSITION_0 = PartitionPosition(42, 1_700_000_000.0)  # a Kafka partition's position


@pytest.mark.parametrize(
    "position",
    [
        POSITION,
        PartitionPosition(3, 9.0, ReplayProgress(order="file")),
        PartitionPosition(5, 2.0, ReplayProgress(order="time", session_close_outputs=True)),
        PartitionPosition(6, 3.0, ReplayProgress(order="file", batch_size=64)),
        PartitionPosition(7, 1.0),
    ],
)
def test_position_round_trip(position: PartitionPosition) -> None:
    assert decode_position(encode_position(position)) == position


def test_progress_without_close_flag_reads_false() -> None:
    # Replay positions written before the session_close_outputs key had three keys.
    blob = msgpack.packb([7, 1.0, {"order": "file", "output": None, "output_bytes": 0}])

    assert decode_position(blob).replay == ReplayProgress(order="file")


def test_position_without_replay_keeps_two_fields() -> None:
    blob = encode_position(PartitionPosition(7, 1.0))

    assert msgpack.unpackb(blob) == [7, 1.0]


@pytest.mark.parametrize("extra", [{"order": "time"}, [1, 2], "text"])
def test_corrupt_replay_progress_raises_codec_error(extra: object) -> None:
    blob = msgpack.packb([7, 1.0, extra])

    with pytest.raises(StateCodecError, match="partition position record is corrupt"):
        decode_position(blob)


def test_store_keeps_replay_progress(tmp_path: Path) -> None:
    with StateStore(StoreConfig(path=tmp_path / "state", sync=False)) as store:
        store.commit({}, {(TOPIC, REPLAY_PARTITION): POSITION})
        stored = store.positions(TOPIC)

    assert stored == {REPLAY_PARTITION: POSITION}


def test_export_import_keeps_replay_progress(tmp_path: Path) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    with StateStore(StoreConfig(path=source, sync=False)) as store:
        store.commit({}, {(TOPIC, REPLAY_PARTITION): POSITION, ("interactions", 0): POSITION_0})
    dump = tmp_path / "dump.jsonl"

    assert main(["state", "--state-dir", str(source), "export", str(dump)]) == 0
    assert main(["state", "--state-dir", str(copy), "import", str(dump)]) == 0

    records = [json.loads(line) for line in dump.read_text().splitlines()]
    kafka = next(record for record in records if record.get("topic") == "interactions")
    assert "replay" not in kafka
    with StateStore(StoreConfig(path=copy)) as store:
        assert store.positions(TOPIC) == {REPLAY_PARTITION: POSITION}
        assert store.positions("interactions") == {0: POSITION_0}


def test_stats_shows_replay_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = tmp_path / "state"
    with StateStore(StoreConfig(path=state_dir, sync=False)) as store:
        store.commit({}, {(TOPIC, REPLAY_PARTITION): POSITION, ("interactions", 0): POSITION_0})

    assert main(["state", "--state-dir", str(state_dir), "stats"]) == 0
    text = capsys.readouterr().out
    assert main(["state", "--state-dir", str(state_dir), "stats", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["positions"]

    assert f"{TOPIC}[-1]@120" in text
    assert ", time order, --output /out/recs.jsonl at byte 4096" in text
    assert rows[0] == {"topic": "interactions", "partition": 0, "next_offset": 42,
                       "watermark": 1_700_000_000.0}  # fmt: skip
    assert rows[1]["replay"] == {
        "order": "time",
        "output": "/out/recs.jsonl",
        "output_bytes": 4096,
        "session_close_outputs": False,
        "batch_size": None,
    }
