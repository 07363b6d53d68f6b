"""Sessionizing: ordering of events and the exact session boundaries."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.errors import DataError


def log_from_rows(tmp_path: Path, rows: list[tuple[str, str, int]], gap: int = 1800) -> EventLog:
    """Write (user, item, timestamp) rows to a CSV file in this order and build the event log."""
    path = tmp_path / "log.csv"
    lines = ["user,item,timestamp"] + [f"{user},{item},{ts}" for user, item, ts in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return build_event_log(read_log(path, ReaderConfig(format="csv")), gap=gap)


def session_items(log: EventLog) -> list[list[str]]:
    ids = log.vocab.ids
    return [[ids[row] for row in log.items[log.session_slice(s)]] for s in range(log.num_sessions)]


def test_gap_equal_to_session_gap_stays(tmp_path):
    log = log_from_rows(tmp_path, [("u", "a", 0), ("u", "b", 1800)], gap=1800)
    assert log.num_sessions == 1


def test_gap_above_session_gap_cuts(tmp_path):
    log = log_from_rows(tmp_path, [("u", "a", 0), ("u", "b", 1801)], gap=1800)
    assert log.num_sessions == 2
    assert session_items(log) == [["a"], ["b"]]


def test_equal_timestamps_keep_file_order(tmp_path):
    rows = [("u", "c", 5), ("u", "a", 5), ("u", "b", 5), ("u", "z", 4)]
    log = log_from_rows(tmp_path, rows)
    assert session_items(log) == [["z", "c", "a", "b"]]


def test_unsorted_input_is_sorted_by_user_then_time(tmp_path):
    rows = [("v", "x", 30), ("u", "b", 20), ("v", "w", 10), ("u", "a", 10), ("u", "c", 9000)]
    log = log_from_rows(tmp_path, rows)
    assert list(log.user_ids) == ["u", "v"]
    assert list(log.user_offsets) == [0, 3, 5]
    assert session_items(log) == [["a", "b"], ["c"], ["w", "x"]]
    assert list(log.user_session_offsets) == [0, 2, 3]
    assert (np.diff(log.timestamps[log.user_slice(0)]) >= 0).all()


def test_session_across_midnight_is_not_cut(tmp_path):
    midnight = int(datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp())
    rows = [("u", "a", midnight - 600), ("u", "b", midnight - 1), ("u", "c", midnight + 600)]
    log = log_from_rows(tmp_path, rows)
    assert log.num_sessions == 1


def test_one_event_users(tmp_path):
    rows = [("u", "a", 1), ("v", "b", 1), ("w", "a", 2), ("w", "c", 3)]
    log = log_from_rows(tmp_path, rows)
    assert log.num_users == 3
    assert log.num_sessions == 3
    assert list(np.diff(log.user_offsets)) == [1, 1, 2]
    assert list(log.user_session_offsets) == [0, 1, 2, 3]


def test_user_sessions_stay_inside_user(tmp_path):
    # A second user starts a new session even when its first event is within the gap.
    rows = [("u", "a", 100), ("v", "b", 101)]
    log = log_from_rows(tmp_path, rows)
    assert log.num_sessions == 2
    assert list(log.session_users()) == [0, 1]


def test_timestamps_stay_int64_seconds(tmp_path):
    big = 4_102_444_800  # 2100-01-01, beyond int32 and not exact in float32
    log = log_from_rows(tmp_path, [("u", "a", big), ("u", "b", big + 1)])
    assert log.timestamps.dtype == np.int64
    assert list(log.timestamps) == [big, big + 1]


def test_negative_gap_is_rejected(tmp_path):
    with pytest.raises(DataError, match="session gap -1 s is negative"):
        log_from_rows(tmp_path, [("u", "a", 1)], gap=-1)
