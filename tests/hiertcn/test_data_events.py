"""`hiertcn data events`: one part of the split as a JSON Lines file that replay reads."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from hiertcn.cli import main
from hiertcn.data import event_export
from hiertcn.data.event_export import event_maps, stream_rejections, stream_time_rejections
from hiertcn.data.log import build_event_log
from hiertcn.data.readers import ReaderConfig, read_log
from stream import events as stream_events
from stream.events import Event, EventConfig, Position, decode_event
from stream.records import encode_fields, read_records

NO_FILTERS = ("--format", "csv", "--min-item-count", "1", "--min-user-events", "1")


def write_interleaved_log(path) -> None:
    """Ten users whose events interleave in time; each user's rows are grouped in the file."""
    lines = ["user,item,timestamp"]
    for user in range(10):
        for event in range(5):
            lines.append(f"u{user},i{(user + event) % 7},{1_600_000_000 + 60 * event + user}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_test_part_written_in_time_order(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "test.jsonl"
    write_interleaved_log(log)

    assert main(["data", "events", str(log), *NO_FILTERS, "--out", str(out)]) == 0

    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    times = [event["ts"] for event in events]
    assert len(events) == 5  # the cold split's test part: 1 of 10 users, 5 events
    assert times == sorted(times)
    assert [event["event_id"] for event in events] == [f"test-{n}" for n in range(5)]
    assert {event["user"] for event in events} == {events[0]["user"]}
    assert set(events[0]) == {"user", "item", "ts", "event_id"}
    assert "wrote 5 events of 1 user (test part)" in capsys.readouterr().out


def test_all_part_interleaves_users(tmp_path):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    write_interleaved_log(log)

    assert main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)]) == 0

    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(events) == 50
    assert [event["ts"] for event in events] == sorted(event["ts"] for event in events)
    assert [event["user"] for event in events[:10]] == [f"u{user}" for user in range(10)]


def test_lines_decode_as_stream_events(tmp_path):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    write_interleaved_log(log)
    assert main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)]) == 0
    row_of = {f"i{item}": item for item in range(7)}

    records = list(read_records(out))
    config = EventConfig()
    decoded = [
        decode_event(None, encode_fields(record.fields), Position("f", -1, n), row_of, config)
        for n, record in enumerate(records)
    ]

    assert len(records) == 50
    assert all(record.error is None for record in records)
    assert all(isinstance(result, Event) for result in decoded), decoded[:3]


def test_impressions_keep_known_items(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,timestamp,shown\nv,b,50,\nu,a,10,a|b|zz\nu,b,20,\nu,c,9000,c|a\nw,a,5,\n",
        encoding="utf-8",
    )
    log = build_event_log(read_log(path, ReaderConfig(format="csv", impressions_col="shown")), 1800)

    events = list(event_maps(log, "all"))

    assert [event["ts"] for event in events] == [5, 10, 20, 50, 9000]
    assert events[1]["impressions"] == ["a", "b"]  # "zz" is outside the vocabulary
    assert events[4]["impressions"] == ["c", "a"]
    assert "impressions" not in events[0]  # an event without a list


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_existing_out_rejected(tmp_path, capsys, existing):
    log, out = tmp_path / "log.csv", tmp_path / "test.jsonl"
    write_interleaved_log(log)
    if existing == "file":
        out.write_text("keep\n", encoding="utf-8")
        expected = "already exists: pass --force to replace it"
    else:
        out.mkdir()
        expected = "is a folder: pass a file path"

    assert main(["data", "events", str(log), *NO_FILTERS, "--out", str(out)]) == 2

    assert expected in capsys.readouterr().err
    if existing == "file":
        assert out.read_text(encoding="utf-8") == "keep\n"


def test_out_equal_to_log_rejected(tmp_path, capsys):
    log = tmp_path / "log.csv"
    write_interleaved_log(log)
    before = log.read_bytes()

    code = main(["data", "events", str(log), *NO_FILTERS, "--out", str(log), "--force"])

    assert code == 2
    assert "is the input log: pass a new file path" in capsys.readouterr().err
    assert log.read_bytes() == before


def test_out_inside_prepared_folder_rejected(tmp_path, capsys):
    log, prepared = tmp_path / "log.csv", tmp_path / "prepared"
    write_interleaved_log(log)
    assert main(["data", "prepare", str(log), *NO_FILTERS, "--out", str(prepared)]) == 0
    out = prepared / "test.jsonl"

    code = main(["data", "events", str(prepared), "--out", str(out)])

    assert code == 2
    assert f"is inside the prepared folder {prepared.resolve()}" in capsys.readouterr().err
    assert not out.exists()


def test_prepared_folder_gives_same_file(tmp_path):
    log, prepared = tmp_path / "log.csv", tmp_path / "prepared"
    write_interleaved_log(log)
    assert main(["data", "prepare", str(log), *NO_FILTERS, "--out", str(prepared)]) == 0
    from_log, from_folder = tmp_path / "a.jsonl", tmp_path / "b.jsonl"

    assert main(["data", "events", str(log), *NO_FILTERS, "--out", str(from_log)]) == 0
    assert main(["data", "events", str(prepared), "--out", str(from_folder)]) == 0

    assert from_folder.read_bytes() == from_log.read_bytes()


def test_prepared_folder_as_out_suggests_path_beside(tmp_path, capsys):
    log, prepared = tmp_path / "log.csv", tmp_path / "prepared"
    write_interleaved_log(log)
    assert main(["data", "prepare", str(log), *NO_FILTERS, "--out", str(prepared)]) == 0
    capsys.readouterr()

    code = main(["data", "events", str(prepared), "--out", str(prepared)])

    assert code == 2
    assert f"is a folder: pass a file path, e.g. {tmp_path / 'test.jsonl'}" in (
        capsys.readouterr().err
    )


def test_missing_parent_folders_created(tmp_path):
    log, out = tmp_path / "log.csv", tmp_path / "new" / "sub" / "test.jsonl"
    write_interleaved_log(log)

    assert main(["data", "events", str(log), *NO_FILTERS, "--out", str(out)]) == 0

    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_all_part_of_log_too_small_to_split(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    log.write_text("user,item,timestamp\nu1,a,100\nu1,b,200\nu2,a,150\n", encoding="utf-8")
    assert main(["data", "events", str(log), *NO_FILTERS, "--out", str(out)]) == 2
    assert "leaves a part without users" in capsys.readouterr().err

    assert main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)]) == 0

    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [event["item"] for event in events] == ["a", "a", "b"]


def write_log_with_times(path, times: list[int]) -> None:
    """Write one event per time, of users u0, u1, ... with one item each."""
    lines = ["user,item,timestamp"]
    lines += [f"u{number},i{number % 3},{ts}" for number, ts in enumerate(times)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_times_rejected_by_stream_warned(tmp_path, caplog):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    future = int(time.time()) + 10 * 86_400
    write_log_with_times(log, [-3600, -60, 0, 1_600_000_000, 100_000_000_005, future])

    with caplog.at_level(logging.WARNING, logger="hiertcn.data.event_export"):
        code = main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)])

    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "hiertcn.data.event_export"]
    assert f"{out}: wrote 4 events that `hiertcn-stream replay` and the worker reject" in (warning)
    assert "2 invalid_ts (before 1970, first -3600)" in warning
    assert "1 ts_in_milliseconds (after the year 5138, first 100000000005)" in warning
    assert f"1 ts_in_future (over 300 s after the current time, first {future})" in warning
    assert "--max-future-seconds off" in warning
    assert len(out.read_text(encoding="utf-8").splitlines()) == 6  # every event is written


def test_no_warning_for_valid_times(tmp_path, caplog):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    write_interleaved_log(log)

    with caplog.at_level(logging.WARNING, logger="hiertcn.data.event_export"):
        assert (
            main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)]) == 0
        )

    assert [r for r in caplog.records if r.name == "hiertcn.data.event_export"] == []


def test_time_rejections_match_stream_decoder():
    now = 1_700_000_000.0
    times = [-1, 0, 1, 1_600_000_000, 100_000_000_000, 100_000_000_001, 2**40]
    times += [int(now) + 300, int(now) + 301, int(now) - 5]
    config = EventConfig()

    masks = stream_time_rejections(np.asarray(times, dtype=np.int64), now)

    expected = {}
    for number, ts in enumerate(times):
        fields = {"user": "u", "item": "a", "ts": ts}
        result = decode_event(
            None, encode_fields(fields), Position("f", -1, number), {"a": 0}, config, now=now
        )
        if not isinstance(result, Event):
            expected.setdefault(result.reason, []).append(number)
    assert {reason: np.flatnonzero(mask).tolist() for reason, mask in masks.items()} == expected
    assert set(expected) == {"invalid_ts", "ts_in_milliseconds", "ts_in_future"}


def test_stream_limits_copied_from_stream():
    config = EventConfig()

    assert config.max_id_length == event_export.STREAM_MAX_ID_LENGTH
    assert config.max_list_length == event_export.STREAM_MAX_LIST_LENGTH
    assert event_export.STREAM_MAX_TS_SECONDS == stream_events.MAX_TS_SECONDS
    assert event_export.STREAM_MAX_FUTURE_SECONDS == stream_events.DEFAULT_MAX_FUTURE_SECONDS


LONG = "x" * 257


def write_log_with_long_values(path) -> None:
    """Write events that the stream rejects for their ids or impressions, and valid ones."""
    lines = ["user,item,timestamp,shown"]
    lines += [f"bulk,b{n},{1_600_000_000 + n}," for n in range(1001)]
    lines += [
        f"{LONG},a,1600002000,",  # invalid_user
        f"u1,{LONG},1600002001,",  # invalid_item
        f"u2,{LONG},-5,",  # invalid_item, which decode checks before the time
        "u3,a,-6,",  # invalid_ts
        f"u4,a,1600002002,{'|'.join(f'b{n}' for n in range(1001))}",  # too_many_impressions
        f"u5,a,1600002003,a|{LONG}",  # invalid_impressions
        f"u6,a,1600002004,a|{'y' * 300}",  # the long id is outside the vocabulary: dropped
        "u7,x" + "x" * 255 + ",1600002005,",  # an item id of exactly 256 characters
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_rejections_match_stream_decoder(tmp_path):
    path = tmp_path / "log.csv"
    write_log_with_long_values(path)
    raw = read_log(path, ReaderConfig(format="csv", impressions_col="shown"))
    log = build_event_log(raw)
    now = 1_700_000_000.0
    row_of = {item: row for row, item in enumerate(log.vocab.ids)}
    users = np.repeat(np.arange(log.num_users), np.diff(log.user_offsets))
    order = np.lexsort((np.arange(log.num_events), users, log.timestamps))

    masks = stream_rejections(log, now)

    expected: dict[str, list[int]] = {}
    for number, fields in enumerate(event_maps(log, "all")):
        value = encode_fields(fields)
        result = decode_event(None, value, Position("f", -1, number), row_of, now=now)
        if not isinstance(result, Event):
            expected.setdefault(result.reason, []).append(int(order[number]))
    found = {reason: np.flatnonzero(mask).tolist() for reason, mask in masks.items()}
    assert found == {reason: sorted(events) for reason, events in expected.items()}
    assert {reason: len(events) for reason, events in expected.items()} == {
        "invalid_user": 1,
        "invalid_item": 2,
        "invalid_ts": 1,
        "too_many_impressions": 1,
        "invalid_impressions": 1,
    }


def test_long_ids_warned(tmp_path, caplog):
    log, out = tmp_path / "log.csv", tmp_path / "all.jsonl"
    rows = [f"{LONG},a,1600000000", "u1,b,1600000001", f"u1,{'z' * 300},1600000002"]
    log.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="hiertcn.data.event_export"):
        code = main(["data", "events", str(log), *NO_FILTERS, "--part", "all", "--out", str(out)])

    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "hiertcn.data.event_export"]
    assert f"{out}: wrote 2 events that `hiertcn-stream replay` and the worker reject" in warning
    assert f"1 invalid_user (user id over 256 characters, first '{'x' * 20}...' of 257 " in (
        warning
    )
    assert f"1 invalid_item (item id over 256 characters, first '{'z' * 20}...' of 300 " in (
        warning
    )
    assert "Check --user-col and --item-col, or shorten the ids" in warning
    assert "--time-unit" not in warning
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3  # every event is written
