"""Reader messages on large or odd logs: bounded row excerpts, rows that span lines, progress
lines, timestamps that only Python's int() accepts, and the notes and hints of column choices."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import hiertcn.data.read_progress as read_progress
from hiertcn.data.excerpts import excerpt
from hiertcn.data.raw_log import RawLogBuilder
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.errors import DataError


def taobao_rows(count: int) -> list[str]:
    return [f"{user},{user * 7},{user % 5},pv,{1511572885 + user}" for user in range(1, count + 1)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_error(path: Path, config: ReaderConfig) -> str:
    with pytest.raises(DataError) as error:
        read_log(path, config)
    return str(error.value)


def test_excerpt_cuts_long_strings():
    assert excerpt("abc") == "'abc'"
    assert excerpt("x" * 250) == f"{'x' * 200!r}... (50 more characters)"
    assert excerpt(list(range(100)), limit=10) == "[0, 1, 2, ... (380 more characters)"


def test_unclosed_quote_names_start_line(tmp_path):
    rows = taobao_rows(3000)
    rows[1500] = '1501,"2729620,3,pv,1511574386'
    path = write_lines(tmp_path / "log.csv", rows)

    message = read_error(path, ReaderConfig(format="taobao"))

    assert message.startswith(f"{path}:1501: row has 2 fields but 5 are needed")
    assert "A quote on line 1501 opens a field that spans lines to line 3000" in message
    assert "more characters)" in message
    assert len(message) < 800


def test_unclosed_quote_in_time_column(tmp_path):
    rows = taobao_rows(3000)
    rows[1500] = '1501,2729620,3,pv,"1511574386'
    path = write_lines(tmp_path / "log.csv", rows)

    message = read_error(path, ReaderConfig(format="taobao"))

    assert message.startswith(f"{path}:1501: timestamp '1511574386\\n1502,")
    assert "is not an integer" in message
    assert "A quote on line 1501 opens a field that spans lines to line 3000" in message
    assert len(message) < 800


def test_unclosed_quote_without_final_newline(tmp_path):
    rows = taobao_rows(20)
    rows[4] = '5,"35,0,pv,1511572890'
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows), encoding="utf-8")

    message = read_error(path, ReaderConfig(format="taobao"))

    assert message.startswith(f"{path}:5: row has 2 fields")
    assert "spans lines to line 20" in message


def test_one_line_short_row_keeps_its_line(tmp_path):
    rows = taobao_rows(20)
    rows[9] = "10,70," + "x" * 1000
    path = write_lines(tmp_path / "log.csv", rows)

    message = read_error(path, ReaderConfig(format="taobao"))

    assert message.startswith(f"{path}:10: row has 3 fields")
    assert "(806 more characters)" in message
    assert "spans lines" not in message


@pytest.mark.parametrize("timestamp", ["1_511_572_885", "１５１１５７２８８５", "+1_0"])
def test_int_only_timestamps_rejected(tmp_path, timestamp):
    rows = taobao_rows(20)
    rows[9] = f"10,70,0,pv,{timestamp}"
    path = write_lines(tmp_path / "log.csv", rows)

    message = read_error(path, ReaderConfig(format="taobao"))

    assert message.startswith(f"{path}:10: timestamp {timestamp!r} is not an integer")
    assert "only the ASCII digits 0-9 after an optional sign" in message


@pytest.mark.parametrize("timestamp", ["1_511_572_885", "１５１１５７２８８５"])
def test_int_only_timestamps_bulk_path(tmp_path, timestamp):
    builder = RawLogBuilder(tmp_path / "log.csv", "s", ReaderConfig(format="csv"), False)

    added = builder.add_columns([1, 2], ["u1", "u2"], ["i1", "i2"], ["5", timestamp], None, None)

    assert added is False
    assert len(builder.times) == 0


@pytest.mark.parametrize("timestamp", ["1_511_572_885", "１５１１５７２８８５"])
def test_int_only_timestamps_jsonl(tmp_path, timestamp):
    record = {"user": "u1", "item": "i1", "timestamp": timestamp}
    path = write_lines(tmp_path / "log.jsonl", [json.dumps(record, ensure_ascii=False)])

    message = read_error(path, ReaderConfig(format="jsonl"))

    assert message.startswith(f"{path}:1: timestamp {timestamp!r} is not an integer")


def test_signed_and_padded_timestamps_accepted(tmp_path):
    path = write_lines(tmp_path / "log.csv", ["user,item,ts", "u1,i1, +15 ", "u2,i2,-3"])

    raw = read_log(path, ReaderConfig(format="csv"))

    assert raw.timestamps.tolist() == [15, -3]


def duplicate_note(caplog) -> str:
    notes = [
        record.getMessage()
        for record in caplog.records
        if record.name == "hiertcn.data.raw_log" and "earlier event" in record.getMessage()
    ]
    assert len(notes) == 1
    return notes[0]


def test_duplicate_note_for_other_item_column(tmp_path, caplog):
    path = write_lines(tmp_path / "log.csv", ["1,10,7,pv,100", "1,11,7,pv,100"])

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="taobao", item_col="category"))

    note = duplicate_note(caplog)
    assert "'category' (column 2)" in note
    assert "copies" not in note


def test_duplicate_note_for_default_item_column(tmp_path, caplog):
    path = write_lines(tmp_path / "log.csv", ["1,10,7,pv,100", "1,10,7,pv,100"])

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="taobao", item_col="1"))

    assert "remove them from the file if they are copies" in duplicate_note(caplog)


def test_duplicate_note_for_jsonl_key(tmp_path, caplog):
    records = [{"user": "u", "item": "i", "cat": "c", "timestamp": 5}] * 2
    path = write_lines(tmp_path / "log.jsonl", [json.dumps(record) for record in records])

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="jsonl", item_col="cat"))

    note = duplicate_note(caplog)
    assert "'cat'" in note
    assert "copies" not in note


def test_tab_header_gets_delimiter_hint(tmp_path):
    path = write_lines(tmp_path / "log.csv", ["user_id\titem_id\ttimestamp", "1\t2\t3"])

    message = read_error(path, ReaderConfig(format="csv", delimiter=","))

    assert "no user column among" in message
    assert "pass --delimiter '\\t'" in message


def progress_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "hiertcn.data.read_progress"
    ]


def test_short_read_logs_no_progress(tmp_path, caplog):
    path = write_lines(tmp_path / "log.csv", taobao_rows(50))

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="taobao"))

    assert progress_lines(caplog) == []
    starts = [record.getMessage() for record in caplog.records if "reading" in record.getMessage()]
    assert starts == [f"reading {path} ({path.stat().st_size:,} bytes, format taobao)"]


def test_progress_lines_delimited(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(read_progress, "PROGRESS_INTERVAL_S", 0.0)
    path = write_lines(tmp_path / "log.csv", taobao_rows(40000))

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="taobao"))

    lines = progress_lines(caplog)
    assert lines[0].startswith(f"{path}: read 16,384 rows so far")
    assert lines[-1].startswith(f"{path}: read 40,000 rows so far")


def test_progress_lines_jsonl(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(read_progress, "PROGRESS_INTERVAL_S", 0.0)
    records = [{"user": "u", "item": str(i), "timestamp": i} for i in range(5000)]
    path = write_lines(tmp_path / "log.jsonl", [json.dumps(record) for record in records])

    with caplog.at_level(logging.INFO):
        read_log(path, ReaderConfig(format="jsonl"))

    assert [line.split(" so far")[0] for line in progress_lines(caplog)] == [
        f"{path}: read 4,096 lines"
    ]
