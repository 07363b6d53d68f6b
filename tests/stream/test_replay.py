"""Tests of replay: event-log readers, the replay loop, its metrics and the `replay` command."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from statestore import StateStore, StoreConfig
from stream.cli import main
from stream.pipeline import Pipeline, PipelineConfig
from stream.records import EventFileError, Record, read_records
from stream.replay import (
    INVALID_RECORD,
    MemoryStates,
    OutputFile,
    Replay,
    ReplayConfig,
    ReplayReport,
    StoreStates,
)
from tests.statestore.helpers import make_read_only
from tests.stream.conftest import (
    NUM_ITEMS,
    ORT_OUTPUT_MARKERS,
    require_cuda_build_without_gpu,
    run_stream_command,
    write_event_log,
)
from tests.stream.fake_bundle import FakeBundle

GAP = 1800.0


def fake_records(count: int, seed: int) -> list[Record]:
    """Return events of 6 users in global time order, as a producer would publish them."""
    rng = np.random.default_rng(seed)
    clock = 1000.0
    records = []
    for number in range(count):
        user = f"u{int(rng.integers(6))}"
        clock += float(rng.choice([1.0, 60.0, 300.0, 900.0]))
        fields = {"user": user, "item": f"i{int(rng.integers(50))}", "ts": clock}
        if rng.random() < 0.3:
            fields["impressions"] = [f"i{int(x)}" for x in rng.choice(50, 4, replace=False)]
        records.append(Record(number, fields))
    return records


def run_fake(records, batch_size: int, output=None, backend=None):
    bundle = FakeBundle()
    pipeline = Pipeline(bundle, PipelineConfig(session_gap=GAP, top_k=5))
    backend = backend if backend is not None else MemoryStates()
    replay = Replay(
        pipeline, backend, ReplayConfig(batch_size=batch_size, recall_k=5), "log", output
    )
    return replay.run(records), backend


def test_replay_counts_rejections_by_reason(tmp_path: Path) -> None:
    records = [
        Record(0, {"user": "u1", "item": "i1", "ts": 10.0}),
        Record(1, {"user": "u1", "item": "nope", "ts": 11.0}),
        Record(2, {"user": "u1", "item": "i2", "ts": math.nan}),
        Record(3, None, "line 4 is not JSON"),
        Record(4, {"user": "u1", "item": "i3", "ts": 12.0}),
    ]

    report, _ = run_fake(records, batch_size=2)

    assert report.records == 5
    assert report.accepted == 2
    assert dict(report.rejected) == {"unknown_item": 1, "invalid_ts": 1, INVALID_RECORD: 1}


def test_replay_writes_one_output_per_event(tmp_path: Path) -> None:
    path = tmp_path / "recs.jsonl"
    output = OutputFile(path)
    report, _ = run_fake(fake_records(40, seed=2), batch_size=8, output=output)
    output.close()

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == report.accepted == 40
    assert set(lines[0]) == {"user", "event_id", "ts", "items", "scores", "model", "session"}
    assert lines[0]["event_id"] == "log[-1]@0"
    assert len(lines[0]["items"]) == 5


def test_replay_output_independent_of_batch_size(tmp_path: Path) -> None:
    records = fake_records(120, seed=3)
    texts = []
    for size in (1, 7, 64):
        path = tmp_path / f"recs{size}.jsonl"
        output = OutputFile(path)
        run_fake(records, batch_size=size, output=output)
        output.close()
        texts.append([json.loads(line) for line in path.read_text().splitlines()])

    for other in texts[1:]:
        assert [line["items"] for line in other] == [line["items"] for line in texts[0]]
        assert [line["session"] for line in other] == [line["session"] for line in texts[0]]


def test_replay_metrics_skip_first_event_per_user() -> None:
    records = fake_records(60, seed=4)
    users = {record.fields["user"] for record in records}

    report, _ = run_fake(records, batch_size=16)

    assert report.counted == 60 - len(users)
    assert 0.0 <= report.recall <= 1.0
    assert 0.0 < report.mrr <= 1.0
    assert 0.0 < report.mrp <= 1.0


def test_report_metric_formulas() -> None:
    report = ReplayReport()

    report.add_live([None, (1, 10), (4, 8), (20, 100)], k=5)

    assert report.counted == 3
    assert report.recall == pytest.approx(2 / 3)
    assert report.mrr == pytest.approx((1 + 0.25 + 0.05) / 3)
    assert report.mrp == pytest.approx((0.1 + 0.5 + 0.2) / 3)


def test_replay_timers_close_idle_sessions() -> None:
    records = [
        Record(0, {"user": "idle", "item": "i1", "ts": 0.0}),
        Record(1, {"user": "busy", "item": "i2", "ts": 10.0}),
        Record(2, {"user": "busy", "item": "i3", "ts": 2000.0}),
    ]

    report, backend = run_fake(records, batch_size=1)

    assert report.closed["timer"] == 1
    assert report.closed["gap"] == 1
    assert backend.states["idle"].session_length == 0
    assert backend.states["busy"].session_length == 1


def test_replay_without_timers_keeps_sessions_open() -> None:
    records = [
        Record(0, {"user": "idle", "item": "i1", "ts": 0.0}),
        Record(1, {"user": "busy", "item": "i2", "ts": 5000.0}),
    ]
    pipeline = Pipeline(FakeBundle(), PipelineConfig(session_gap=GAP))
    backend = MemoryStates()

    report = Replay(pipeline, backend, ReplayConfig(batch_size=1, timers=False), "log").run(records)

    assert report.closed["timer"] == 0
    assert backend.states["idle"].session_length == 1


def test_replay_with_state_store_matches_memory(tmp_path: Path) -> None:
    records = fake_records(80, seed=5)
    _, memory = run_fake(records, batch_size=9)
    store = StateStore(StoreConfig(path=tmp_path / "state", sync=False))
    try:
        report, _ = run_fake(records, batch_size=9, backend=StoreStates(store, "replay:log"))
        stored = store.read(memory.states)
        positions = store.positions("replay:log")
    finally:
        store.close()

    assert report.accepted == 80
    assert report.closed["timer"] > 0
    assert stored.keys() == memory.states.keys()
    for user, state in stored.items():
        assert state.same_as(memory.states[user]), user
    assert positions[-1].next_offset == 80


def test_jsonl_reader_marks_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"user": "u1", "item": 1, "ts": 5}\n\nnot json\n[1, 2]\n{"user": "u2"}\n')

    records = list(read_records(path))

    assert [record.number for record in records] == [0, 1, 2, 3]
    assert records[0].fields == {"user": "u1", "item": 1, "ts": 5}
    assert records[1].fields is None
    assert "not JSON" in records[1].error
    assert records[2].fields is None
    assert records[3].fields == {"user": "u2"}


def test_msgpack_reader(tmp_path: Path) -> None:
    path = tmp_path / "events.msgpack"
    events = [{"user": "u1", "item": 1, "ts": 5.0}, {"user": "u2", "item": "x", "ts": 6.0}]
    path.write_bytes(b"".join(msgpack.packb(event) for event in events) + b"\x93\x01")

    records = list(read_records(path))

    assert [record.fields for record in records] == events
    assert len(records) == 2


def test_csv_reader(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user,item,ts,impressions\nu1,5,10.5,5|6|7\nu2,6,abc,\nu3,7\n")

    records = list(read_records(path))

    assert records[0].fields == {
        "user": "u1",
        "item": "5",
        "ts": 10.5,
        "impressions": ["5", "6", "7"],
    }
    assert records[1].fields == {"user": "u2", "item": "6", "ts": "abc"}
    assert records[2].fields is None


def test_csv_without_columns_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user,thing,ts\nu1,5,10\n")

    with pytest.raises(EventFileError, match="item"):
        list(read_records(path, "csv"))


def test_time_order_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"user": "a", "item": 1, "ts": 30},
        {"user": "b", "item": 2, "ts": 10},
        {"user": "c", "item": 3, "ts": "bad"},
        {"user": "d", "item": 4, "ts": 10},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    records = list(read_records(path, order="time"))

    assert [record.fields["user"] for record in records] == ["b", "d", "a", "c"]


def test_dataset_format_read_through_hiertcn_reader(shared_data: Path) -> None:
    path = shared_data / "movielens-100k" / "u.data"

    records = read_records(path, "movielens")
    first = next(iter(records))

    assert set(first.fields) == {"user", "item", "ts"}
    assert isinstance(first.fields["ts"], int)


def test_missing_event_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="not found"):
        read_records(tmp_path / "absent.jsonl")


def test_replay_command_on_onnx_bundle(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    events = write_event_log(events_path, 150, seed=11)
    with events_path.open("a") as file:
        file.write('{"user": "user1", "item": 9999, "ts": 1700000000}\n')
        file.write('{"user": "user1", "item": 1, "ts": 1700000000000}\n')
    output = tmp_path / "recs.jsonl"

    code = main(
        [
            "replay",
            "--events",
            str(events_path),
            "--bundle",
            str(onnx_bundle_dir),
            "--batch-size",
            "16",
            "--output",
            str(output),
        ]
    )

    printed = capsys.readouterr().out
    assert code == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == len(events)
    assert [line["user"] for line in lines] == [event["user"] for event in events]
    assert all(len(line["items"]) == 5 for line in lines)
    assert "Recall@5" in printed
    assert "unknown_item" in printed
    assert "ts_in_milliseconds" in printed
    assert "events           150" in printed


def test_replay_command_rejects_broken_bundle(tmp_path: Path, capsys) -> None:
    events_path = tmp_path / "events.jsonl"
    events_path.write_text('{"user": "u", "item": 1, "ts": 1}\n')

    code = main(["replay", "--events", str(events_path), "--bundle", str(tmp_path / "none")])

    assert code == 2
    assert "cannot load the model bundle" in capsys.readouterr().err


def test_replay_command_with_state_dir(onnx_bundle_dir: Path, tmp_path: Path, capsys) -> None:
    events_path = tmp_path / "events.jsonl"
    events = write_event_log(events_path, 60, seed=12)
    state_dir = tmp_path / "state"

    code = main(
        [
            "replay",
            "--events",
            str(events_path),
            "--bundle",
            str(onnx_bundle_dir),
            "--state-dir",
            str(state_dir),
            "--no-timers",
        ]
    )

    assert code == 0
    store = StateStore(StoreConfig(path=state_dir))
    try:
        users = {event["user"] for event in events}
        states = store.read(users)
        positions = store.positions(f"replay:{events_path.resolve()}")
    finally:
        store.close()
    assert states.keys() == users
    total = sum(state.session_count for state in states.values())
    assert total >= len(users)
    assert positions[-1].next_offset == 60
    assert positions[-1].watermark == events[-1]["ts"]


def test_csv_reader_accepts_training_header(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\nu1,5,100\n")

    for log_format in ("auto", "csv"):
        records = list(read_records(path, log_format))
        assert records[0].fields == {"user": "u1", "item": "5", "ts": 100.0}


def test_csv_reader_time_col_chooses_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts,clock\nu1,5,1,200\n")

    records = list(read_records(path, "csv", time_col="clock"))

    assert records[0].fields == {"user": "u1", "item": "5", "ts": 200.0}


def test_csv_missing_time_column_names_flag(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,clock\nu1,5,200\n")

    for log_format in ("auto", "csv"):
        with pytest.raises(EventFileError) as raised:
            list(read_records(path, log_format))

        message = str(raised.value)
        assert "['user', 'item', 'clock']" in message
        assert "--time-col" in message


def test_time_col_rejected_for_msgpack(tmp_path: Path) -> None:
    path = tmp_path / "log.msgpack"
    path.write_bytes(msgpack.packb({"user": "u", "item": 1, "ts": 1}))

    with pytest.raises(EventFileError, match="--time-col applies only to csv, jsonl"):
        read_records(path, time_col="clock")


def test_msgpack_reader_reports_skipped_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.msgpack"
    good = msgpack.packb({"user": "u1", "item": 1, "ts": 5.0})
    path.write_bytes(good + b"\xc1" + good * 3)

    records = list(read_records(path))

    assert records[0].fields is not None
    assert records[1].fields is None
    assert f"at byte {len(good)}" in records[1].error
    assert f"({3 * len(good) + 1} bytes) skipped" in records[1].error
    assert "the rest of the file" in caplog.text


def test_unknown_format_lists_one_set(tmp_path: Path) -> None:
    path = tmp_path / "garbage.txt"
    path.write_text("hello world\n")

    with pytest.raises(EventFileError) as raised:
        read_records(path)

    message = str(raised.value)
    assert message.count("pass --format") == 1
    assert "jsonl, msgpack, csv, movielens" in message


def write_otto_in_seconds(path: Path) -> None:
    """Write two OTTO sessions whose times are Unix seconds, not OTTO's milliseconds."""
    lines = []
    for session in range(2):
        events = [
            {"aid": (session + step) % NUM_ITEMS, "ts": 1_700_000_000 + 60 * step, "type": "clicks"}
            for step in range(4)
        ]
        lines.append(json.dumps({"session": session, "events": events}))
    path.write_text("\n".join(lines) + "\n")


def test_replay_command_reads_otto_in_seconds(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "train.jsonl"
    write_otto_in_seconds(events_path)
    argv = ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)]

    state_dir = tmp_path / "states"

    assert main([*argv, "--state-dir", str(state_dir)]) == 2
    assert "pass --otto-time-unit s" in capsys.readouterr().err
    assert not state_dir.exists()
    assert main([*argv, "--otto-time-unit", "s"]) == 0
    assert "events           8" in capsys.readouterr().out


def test_replay_command_all_otto_events_rejected(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "train.jsonl"
    event = '{"aid": 99999, "ts": 1659304800025, "type": "clicks"}'
    events_path.write_text(f'{{"session": 0, "events": [{event}]}}\n')
    argv = ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)]

    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "(1 records, all rejected (reasons above))" in error
    assert "check --format, --otto-time-unit and that the bundle was trained on this log" in error
    assert "run with -v" in error
    assert main(["-v", *argv]) == 2
    assert "run with -v" not in capsys.readouterr().err


def test_replay_command_without_valid_event_exits_2(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "garbage.jsonl"
    events_path.write_text("not json\n[1]\n")

    code = main(["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)])

    captured = capsys.readouterr()
    assert code == 2
    assert "run with -v to list them" in captured.out
    assert "no valid event" in captured.err


def test_replay_command_unwritable_output_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    events_path.write_text('{"user": "u", "item": 1, "ts": 1}\n')
    blocker = tmp_path / "file.csv"
    blocker.write_text("")

    # The bundle does not exist: the output check must come first.
    argv = ["replay", "--events", str(events_path), "--bundle", str(tmp_path / "none")]
    code = main([*argv, "--output", str(blocker / "x.jsonl")])

    assert code == 2
    assert "is not a directory" in capsys.readouterr().err


def test_records_reject_invalid_utf8_without_changing_ids(tmp_path) -> None:
    from stream.records import EventFileError, read_records

    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(
        b'{"user": "a", "item": "1", "ts": 1}\n{"user": "Jos\xe9", "item": "1", "ts": 2}\n'
    )
    records = list(read_records(jsonl))
    assert records[0].fields == {"user": "a", "item": "1", "ts": 1}
    assert records[1].fields is None
    assert "not valid UTF-8" in records[1].error

    csv_file = tmp_path / "events.csv"
    csv_file.write_bytes(b"user,item,ts\nJos\xe9,1,2\nJos\xc3\xa9,1,3\n")
    records = list(read_records(csv_file))
    assert records[0].fields is None
    assert records[0].error == "not valid UTF-8 (byte 0xe9)"
    assert records[0].location == "line 2"
    assert records[1].fields == {"user": "Jos\u00e9", "item": "1", "ts": 3.0}

    csv_file.write_bytes(b"user,item,ts,n\xffte\nu1,1,2,x\n")
    with pytest.raises(EventFileError, match=r"line 1\) .* not valid UTF-8 \(byte 0xff\)"):
        read_records(csv_file, "csv")


def test_records_accept_utf8_bom(tmp_path) -> None:
    from stream.records import read_records

    csv_file = tmp_path / "events.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfuser,item,ts\nu1,7,3\n")
    (record,) = list(read_records(csv_file))
    assert record.fields["user"] == "u1"


def test_replay_into_state_store_resumes_where_it_stopped(tmp_path: Path) -> None:
    records = fake_records(80, seed=6)
    _, memory = run_fake(records, batch_size=9)
    store = StateStore(StoreConfig(path=tmp_path / "state", sync=False))
    try:
        first, _ = run_fake(records[:35], batch_size=9, backend=StoreStates(store, "replay:log"))
        second, _ = run_fake(records, batch_size=9, backend=StoreStates(store, "replay:log"))
        stored = store.read(memory.states)
    finally:
        store.close()

    assert first.records == 35
    assert second.records == 45
    assert stored.keys() == memory.states.keys()
    for user, state in stored.items():
        assert state.same_as(memory.states[user]), user


def _replay_into(events_path: Path, bundle: Path, state_dir: Path, output: Path) -> int:
    return main(
        [
            "replay",
            "--events",
            str(events_path),
            "--bundle",
            str(bundle),
            "--state-dir",
            str(state_dir),
            "--output",
            str(output),
        ]
    )


def test_replay_command_resumes_and_appends_output(
    onnx_bundle_dir: Path, tmp_path: Path, caplog
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 30, seed=13)
    state_dir, output = tmp_path / "state", tmp_path / "recs.jsonl"
    assert _replay_into(events_path, onnx_bundle_dir, state_dir, output) == 0
    lines = events_path.read_text().splitlines()
    more = write_event_log(tmp_path / "more.jsonl", 10, seed=14)
    with events_path.open("a") as log:
        log.writelines(line + "\n" for line in (tmp_path / "more.jsonl").read_text().splitlines())

    with caplog.at_level(logging.INFO, logger="stream.commands.replay"):
        grown = _replay_into(events_path, onnx_bundle_dir, state_dir, output)
        unchanged = _replay_into(events_path, onnx_bundle_dir, state_dir, output)

    assert grown == 0
    assert unchanged == 0
    assert "nothing new to replay" in caplog.text
    assert len(output.read_text().splitlines()) == len(lines) + len(more)


def test_replay_command_keeps_logs_of_same_name_apart(
    onnx_bundle_dir: Path, tmp_path: Path, caplog
) -> None:
    first, second = tmp_path / "a" / "events.jsonl", tmp_path / "b" / "events.jsonl"
    first.parent.mkdir()
    second.parent.mkdir()
    write_event_log(first, 30, seed=15)
    write_event_log(second, 20, seed=16)
    state_dir = tmp_path / "state"
    assert _replay_into(first, onnx_bundle_dir, state_dir, tmp_path / "one.jsonl") == 0

    with caplog.at_level(logging.WARNING, logger="stream.replay"):
        code = _replay_into(second, onnx_bundle_dir, state_dir, tmp_path / "two.jsonl")

    assert code == 0
    assert len((tmp_path / "two.jsonl").read_text().splitlines()) == 20
    assert "applies its events on top of them" in caplog.text


def test_replay_counts_out_of_order_events() -> None:
    records = [
        Record(0, {"user": "u1", "item": "i1", "ts": 100.0}),
        Record(1, {"user": "u2", "item": "i2", "ts": 50.0}),
        Record(2, {"user": "u1", "item": "i3", "ts": 90.0}),
        Record(3, {"user": "u1", "item": "i4", "ts": 95.0}),
        Record(4, {"user": "u1", "item": "i5", "ts": 100.0}),
    ]

    # Batches of 2 put u1's newest time in the stored state before the older events arrive.
    report, _ = run_fake(records, batch_size=2)

    assert report.out_of_order == 2


def _write_out_of_order_log(path: Path) -> None:
    events = write_event_log(path, 60, seed=13)
    path.write_text("".join(json.dumps(event) + "\n" for event in reversed(events)))


@pytest.mark.parametrize(("order", "warned"), [("file", True), ("time", False)])
def test_replay_order_warning(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    order: str,
    warned: bool,
) -> None:
    events_path = tmp_path / "events.jsonl"
    _write_out_of_order_log(events_path)
    argv = ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)]

    with caplog.at_level(logging.WARNING, logger="stream.replay_report"):
        code = main([*argv, "--order", order])

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "same user" in r.getMessage()
    ]
    assert code == 0
    if warned:
        assert len(warnings) == 1
        assert "--order time" in warnings[0]
        assert "older than an earlier event of the same user" in warnings[0]
    else:
        assert not [message for message in warnings if "--order time" in message]


def test_empty_event_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("")

    with pytest.raises(EventFileError, match="is empty"):
        read_records(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("events.jsonl", "\n \n\t\r\n"), ("events.txt", "\n\n"), ("events.jsonl", "\ufeff\n")],
)
def test_blank_event_file_rejected(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(EventFileError, match="contains only blank lines"):
        read_records(path)


def test_otto_file_in_seconds_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    event = '{"aid": 5, "ts": 1659304800, "type": "clicks"}'
    path.write_text(f'{{"session": 0, "events": [{event}]}}\n')

    with pytest.raises(EventFileError, match="If the file is in seconds, pass --otto-time-unit s"):
        read_records(path, "otto")


def test_otto_file_in_milliseconds_read_as_seconds_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    event = '{"aid": 5, "ts": 1659304800025, "type": "clicks"}'
    path.write_text(f'{{"session": 0, "events": [{event}]}}\n')

    with pytest.raises(EventFileError) as error:
        read_records(path, otto_time_unit="s")
    message = str(error.value)
    assert "line 1: timestamp 1659304800025 is after the year 9999 in seconds" in message
    assert "drop --otto-time-unit s" in message


def test_otto_file_in_seconds_read(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    event = '{"aid": 5, "ts": 1659304800, "type": "clicks"}'
    path.write_text(f'{{"session": 0, "events": [{event}]}}\n')

    records = list(read_records(path, otto_time_unit="s"))

    assert [record.fields for record in records] == [
        {"user": "0", "item": "5", "ts": 1659304800, "type": "clicks"}
    ]


def test_otto_time_unit_for_other_format_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")

    with pytest.raises(EventFileError, match="--otto-time-unit applies only to OTTO files"):
        read_records(path, "movielens", otto_time_unit="s")


def test_ms_unit_for_data_set_format_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")

    with pytest.raises(EventFileError, match="--ts-unit ms applies only to jsonl"):
        read_records(path, "movielens", ts_unit="ms")


def test_otto_layout_detected_in_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    event = '{"aid": 5, "ts": 1659304800025, "type": "clicks"}'
    path.write_text(f'\n{{"session": 7, "events": [{event}]}}\n')

    records = list(read_records(path))

    assert [record.fields for record in records] == [
        {"user": "7", "item": "5", "ts": 1659304800, "type": "clicks"}
    ]


def test_event_file_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="is a folder"):
        read_records(tmp_path)


def test_verbose_flag_after_replay_accepted(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 20, seed=14)
    with events_path.open("a") as file:
        file.write('{"user": "user1", "item": 9999, "ts": 1700000000}\n')

    code = main(["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir), "-v"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "rejected         1\n" in printed
    assert "run with -v" not in printed


def test_verbose_replay_logs_each_rejection_once_by_line(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events_path = tmp_path / "badlog.jsonl"
    events_path.write_text(
        '{"user": "u1", "item": 1, "ts": 1700000000}\n'
        "\n"
        "not json\n"
        '{"user": "u1", "item": 9999, "ts": 1700000001}\n'
    )
    caplog.set_level(logging.DEBUG)

    code = main(["-v", "replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)])

    rejections = [
        record.getMessage() for record in caplog.records if "rejected" in record.getMessage()
    ]
    assert code == 0
    assert len(rejections) == 2
    assert (
        rejections[0] == "badlog.jsonl line 3 rejected (invalid_record): not JSON: Expecting value"
    )
    assert rejections[1].startswith("badlog.jsonl line 4 rejected (unknown_item): item '9999'")
    assert "[-1]@" not in caplog.text


def test_replay_without_counted_event_prints_na(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "first_events.jsonl"
    events_path.write_text(
        '{"user": "u1", "item": 1, "ts": 1700000000}\n{"user": "u2", "item": 2, "ts": 1700000001}\n'
    )

    code = main(["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "nan" not in printed
    assert "Recall@5         n/a (no counted event" in printed
    assert "MRR              n/a" in printed


def test_replay_help_states_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 when the replay ran" in printed
    assert "2 for invalid input" in printed
    assert "a file whose every record is rejected" in printed


def test_replay_k_above_catalog_rejected(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 20, seed=13)

    code = main(
        ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir), "--k", "1000"]
    )

    captured = capsys.readouterr()
    assert code == 2
    assert (
        f"--k 1000 is invalid because the bundle has only {NUM_ITEMS} items: pass --k "
        f"{NUM_ITEMS} or less" in captured.err
    )
    assert "Recall@1000" not in captured.out


def test_replay_k_equal_to_catalog_accepted(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 20, seed=13)

    code = main(
        ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir), "--k",
         str(NUM_ITEMS)]
    )  # fmt: skip

    assert code == 0
    assert f"Recall@{NUM_ITEMS}" in capsys.readouterr().out


def test_records_carry_line_numbers(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text('{"user": "u1", "item": 1, "ts": 5}\n\nnot json\n')
    csv_path = tmp_path / "events.csv"
    csv_path.write_text('user,item,ts\nu1,"i\n1",5\nu2\nu3,i3,7\n')
    msgpack_path = tmp_path / "events.msgpack"
    msgpack_path.write_bytes(msgpack.packb({"user": "u1", "item": 1, "ts": 5}) * 2)

    jsonl_records = list(read_records(jsonl))
    csv_records = list(read_records(csv_path))
    msgpack_records = list(read_records(msgpack_path))

    assert [record.location for record in jsonl_records] == ["line 1", "line 3"]
    assert jsonl_records[1].error == "not JSON: Expecting value"
    assert [record.location for record in csv_records] == ["line 2", "line 4", "line 5"]
    assert [record.location for record in msgpack_records] == ["record 1", "record 2"]


def test_replay_command_cuda_without_gpu_exits_2_quietly(
    onnx_bundle_dir: Path, tmp_path: Path
) -> None:
    require_cuda_build_without_gpu()
    events = tmp_path / "events.jsonl"
    write_event_log(events, count=5, seed=0)
    output = tmp_path / "recs.jsonl"
    args = ["--events", str(events), "--bundle", str(onnx_bundle_dir), "--output", str(output)]

    result = run_stream_command("replay", *args, "--device", "cuda", cwd=tmp_path)

    assert result.returncode == 2
    assert "device 'cuda' requested, but no CUDA GPU is usable on this host" in result.stderr
    assert "Pass --device cpu" in result.stderr
    assert "install the NVIDIA driver" in result.stderr
    for marker in ORT_OUTPUT_MARKERS:
        assert marker not in result.stderr
    assert not output.exists()


def test_replay_command_read_only_state_dir_exits_2(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = tmp_path / "events.jsonl"
    write_event_log(events, 10, seed=3)
    state_dir = tmp_path / "state"
    args = ["replay", "--events", str(events), "--bundle", str(onnx_bundle_dir)]
    assert main([*args, "--state-dir", str(state_dir), "--no-timers"]) == 0
    capsys.readouterr()
    make_read_only(state_dir, monkeypatch)

    code = main([*args, "--state-dir", str(state_dir), "--no-timers"])

    err = capsys.readouterr().err
    assert code == 2
    assert f"hiertcn-stream: error: LMDB open failed in state store {state_dir}" in err
    assert "pass a writable --state-dir" in err


def _write_log_grouped_by_user(path: Path) -> int:
    """Write a log whose events are grouped by user, each user's in time order; return users."""
    events = write_event_log(path, 120, seed=17)
    grouped = sorted(events, key=lambda event: event["user"])
    path.write_text("".join(json.dumps(event) + "\n" for event in grouped))
    return len({event["user"] for event in events})


@pytest.mark.parametrize(
    ("flags", "warned"),
    [((), True), (("--order", "time"), False), (("--no-timers",), False)],
)
def test_replay_warns_about_events_behind_watermark(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flags: tuple[str, ...],
    warned: bool,
) -> None:
    events_path = tmp_path / "grouped.jsonl"
    _write_log_grouped_by_user(events_path)
    argv = ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)]

    with caplog.at_level(logging.WARNING, logger="stream.replay_report"):
        code = main([*argv, "--batch-size", "16", *flags])

    warnings = [r.getMessage() for r in caplog.records if "session gap" in r.getMessage()]
    assert code == 0
    assert not [r for r in caplog.records if "same user" in r.getMessage()]
    if warned:
        assert len(warnings) == 1
        assert " of 120 events in " in warnings[0]
        assert "pass --order time" in warnings[0]
        assert "or --no-timers" in warnings[0]
    else:
        assert warnings == []


def test_replay_counts_events_behind_watermark() -> None:
    records = [
        Record(0, {"user": "u1", "item": "i1", "ts": 10_000.0}),
        Record(1, {"user": "u2", "item": "i2", "ts": 10_000.0 - GAP - 1}),
        Record(2, {"user": "u2", "item": "i3", "ts": 10_000.0 - GAP}),
        Record(3, {"user": "u2", "item": "i4", "ts": 10_000.0 - GAP + 1}),
    ]

    report, _ = run_fake(records, batch_size=1)

    # Only the event more than the gap behind the watermark of the batches before it.
    assert report.behind_watermark == 1


def test_replay_help_defines_metrics_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "against the user's previous recommendation" in printed
    assert "A user's first event has no previous recommendation and is not counted" in printed
    assert "(default: none are written)" in printed
    assert "the stored run that wrote it, which continues the file" in printed
    assert "replace an existing --output file" in printed
    assert "or time key of a JSON Lines file, in the unit that --ts-unit sets" in printed
    assert "--user-col NAME user column of a CSV or TSV file" in printed
    assert "--item-col NAME item column of a CSV or TSV file" in printed
    assert "File order is right only for a file sorted by time" in printed


def test_produce_help_states_time_col_unit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["produce", "--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "in milliseconds with its --ts-unit ms" in printed


@pytest.mark.parametrize("flag", ["--k", "--batch-size"])
def test_replay_zero_count_names_flag(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 5, seed=1)

    code = main(
        ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir), flag, "0"]
    )

    assert code == 2
    assert f"{flag} 0 is invalid: use an integer >= 1" in capsys.readouterr().err


def test_replay_bundle_file_asks_for_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events_path = tmp_path / "events.jsonl"
    write_event_log(events_path, 5, seed=1)

    code = main(["replay", "--events", str(events_path), "--bundle", str(events_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert f"the model bundle {events_path}, because it is a file" in err
    assert "pass the bundle folder" in err


def test_replay_skips_csv_row_with_invalid_utf8(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events_path = tmp_path / "events.csv"
    rows = [f"user{step % 3},{step},{1_700_000_000 + 60 * step}\n" for step in range(6)]
    rows[3] = "user\xff,3,1700000180\n"
    events_path.write_bytes(("user,item,ts\n" + "".join(rows)).encode("latin-1"))
    output = tmp_path / "recs.jsonl"
    argv = ["replay", "--events", str(events_path), "--bundle", str(onnx_bundle_dir)]
    caplog.set_level(logging.DEBUG)

    code = main(["-v", *argv, "--output", str(output)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "invalid_record 1" in printed
    assert "events           5" in printed
    assert len(output.read_text().splitlines()) == 5
    assert "events.csv line 5 rejected (invalid_record): not valid UTF-8 (byte 0xff)" in caplog.text
