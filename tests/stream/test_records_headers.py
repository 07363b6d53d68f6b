"""Header rows and column choice on both sides, `hiertcn data` (`read_log`) and the event-file
reader of `replay` and `produce` (`read_records`). Both accept the same files and reject the same
ones with the same messages. The cases are headerless files, one column for two fields, digits,
duplicate names and a last line still being written."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgpack
import pytest

from hiertcn.cli import main as hiertcn_main
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.errors import DataError
from stream.cli import main as stream_main
from stream.records import EventFileError, read_records
from tests.stream.test_produce import FakeProducer

# Three events of two users, without a header; the first row reads as numbers.
HEADERLESS_ROWS = "99,10,829827514\n99,11,829828005\n7,12,829828100\n"
POSITIONS = {"user_col": "0", "item_col": "1", "time_col": "2"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def stream_error(path: Path, **options: object) -> str:
    """Return the message of the `EventFileError` that `read_records` raises."""
    with pytest.raises(EventFileError) as raised:
        list(read_records(path, **options))
    return str(raised.value)


def hiertcn_error(path: Path, **options: object) -> str:
    """Return the message of the `DataError` that `read_log` raises."""
    with pytest.raises(DataError) as raised:
        read_log(path, ReaderConfig(**options))
    return str(raised.value)


def test_numeric_header_row_rejected_by_stream(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", HEADERLESS_ROWS)

    message = stream_error(path, **POSITIONS)

    assert "events.csv:1: every cell of the header row ['99', '10', '829827514']" in message
    assert "pass --no-header" in message
    assert message == hiertcn_error(path, format="csv", **POSITIONS)


def test_integer_time_header_cell_rejected_by_stream(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "u7,i500,1511544070\nu8,i501,1511544080\n")

    message = stream_error(path, **POSITIONS)

    assert "names the time column (column 2) '1511544070', an integer" in message
    assert message == hiertcn_error(path, format="csv", **POSITIONS)


@pytest.mark.parametrize("columns", [{}, POSITIONS, {"user_col": "0", "item_col": "1"}])
def test_no_header_reads_every_row(tmp_path: Path, columns: dict[str, str]) -> None:
    path = write(tmp_path / "events.csv", HEADERLESS_ROWS)

    records = list(read_records(path, header=False, **columns))
    raw = read_log(path, ReaderConfig(header=False, **columns))

    assert [record.fields for record in records] == [
        {"user": "99", "item": "10", "ts": 829827514.0},
        {"user": "99", "item": "11", "ts": 829828005.0},
        {"user": "7", "item": "12", "ts": 829828100.0},
    ]
    assert [record.line for record in records] == [1, 2, 3]
    assert [record.fields["user"] for record in records] == list(raw.users)
    assert [record.fields["item"] for record in records] == list(raw.items)


def test_no_header_positions_pick_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "events.tsv", "x\t829827514\tu1\ti1\n")

    (record,) = read_records(path, header=False, user_col="2", item_col="3", time_col="1")

    assert record.fields == {"user": "u1", "item": "i1", "ts": 829827514.0}


def test_no_header_short_row_is_invalid_record(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "u1,i1,829827514\nu2,i2\n")

    first, second = read_records(path, header=False)

    assert first.fields == {"user": "u1", "item": "i1", "ts": 829827514.0}
    assert second.fields is None
    assert (
        second.error
        == "row has 2 fields, but the column flags need 3 (up to column 2, counted from 0)"
    )
    assert second.line == 2


def test_no_header_rejects_column_name(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", HEADERLESS_ROWS)

    message = stream_error(path, header=False, user_col="user")

    assert "column 'user' for the user needs a header" in message
    assert "give a 0-based position" in message
    assert message == hiertcn_error(path, format="csv", header=False, user_col="user")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("events.jsonl", '{"user": "u", "item": "i", "ts": 1}\n'),
        ("events.msgpack", None),
    ],
)
def test_no_header_rejected_without_header_rows(
    tmp_path: Path, name: str, text: str | None
) -> None:
    path = tmp_path / name
    if text is None:
        path.write_bytes(msgpack.packb({"user": "u", "item": "i", "ts": 1}))
    else:
        write(path, text)

    message = stream_error(path, header=False)

    assert "--no-header applies only to CSV files" in message
    assert "drop --no-header" in message


def test_replay_no_header_counts_first_event(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{n % 3},{n % 20},{1_600_000_000 + 60 * n}" for n in range(12)]
    path = write(tmp_path / "events.csv", "\n".join(rows) + "\n")
    argv = ["replay", "--events", str(path), "--bundle", str(onnx_bundle_dir)]

    assert stream_main([*argv, "--no-header"]) == 0
    printed = capsys.readouterr().out
    assert stream_main([*argv, "--user-col", "0", "--item-col", "1", "--time-col", "2"]) == 2

    assert "records          12" in printed
    assert "events           12" in printed
    assert "every cell of the header row" in capsys.readouterr().err


def test_produce_no_header_publishes_first_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.commands import produce as produce_command
    from stream.produce import EventProducer

    path = write(tmp_path / "events.csv", HEADERLESS_ROWS)
    fake = FakeProducer()
    monkeypatch.setattr(
        produce_command, "EventProducer", lambda config: EventProducer(config, fake)
    )
    argv = ["produce", "--events", str(path), "--brokers", "127.0.0.1:1", "--topic", "t"]

    assert stream_main([*argv, "--no-header"]) == 0
    assert stream_main([*argv, "--user-col", "0", "--item-col", "1", "--time-col", "2"]) == 2

    assert "produced 3, delivered 3" in capsys.readouterr().out
    assert msgpack.unpackb(fake.sent[0][2]) == {"user": "99", "item": "10", "ts": 829827514.0}


def test_one_csv_column_for_user_and_item_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "customer,sku,when\nc1,10,829827514\n")
    columns = {"user_col": "sku", "item_col": "sku", "time_col": "when"}

    from_stream = stream_error(path, **columns)
    from_hiertcn = hiertcn_error(path, format="csv", **columns)

    expected = "the user and the item are read from one column, 'sku' (column 1)"
    assert expected in from_stream
    assert "pass --user-col, --item-col and --time-col with three different columns" in (
        from_stream
    )
    assert from_stream == from_hiertcn


def test_one_jsonl_key_for_user_and_item_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.jsonl", '{"cust": "c1", "sku": "10", "when": 829827514}\n')
    columns = {"user_col": "sku", "item_col": "sku", "time_col": "when"}

    from_stream = stream_error(path, **columns)
    from_hiertcn = hiertcn_error(path, format="jsonl", **columns)

    assert "the user and the item are read from one key, 'sku'" in from_stream
    assert from_stream == from_hiertcn


def test_flag_key_equal_to_default_key_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.jsonl", '{"user": "u1", "item": "10", "ts": 829827514}\n')

    from_stream = stream_error(path, user_col="item")
    from_hiertcn = hiertcn_error(path, format="jsonl", user_col="item")

    assert "the user and the item are read from one key, 'item'" in from_stream
    assert from_stream == from_hiertcn


def test_one_headerless_column_for_user_and_time_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", HEADERLESS_ROWS)

    from_stream = stream_error(path, header=False, user_col="2")
    from_hiertcn = hiertcn_error(path, format="csv", header=False, user_col="2")

    assert "the user and the time are read from one column, column 2" in from_stream
    assert from_stream == from_hiertcn


@pytest.mark.parametrize("spec", ["²", "٠", "１"])
def test_non_ascii_digits_are_names(tmp_path: Path, spec: str) -> None:
    path = write(tmp_path / "events.csv", "customer,sku,when\nc1,10,829827514\n")
    columns = {"user_col": spec, "item_col": "sku", "time_col": "when"}

    from_stream = stream_error(path, **columns)
    from_hiertcn = hiertcn_error(path, format="csv", **columns)

    assert f"has no column {spec!r} (named by --user-col)" in from_stream
    assert f"column {spec!r} for the user not found in the header" in from_hiertcn


def test_non_ascii_digit_header_name_picked_by_name(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "٠,sku,when\nc1,10,829827514\n")
    columns = {"user_col": "٠", "item_col": "sku", "time_col": "when"}

    (record,) = read_records(path, **columns)
    raw = read_log(path, ReaderConfig(format="csv", **columns))

    assert record.fields["user"] == "c1"
    assert list(raw.users) == ["c1"]


def test_unicode_digit_flag_exits_2_in_hiertcn_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "events.csv", "customer,sku,when\nc1,10,829827514\n")

    code = hiertcn_main(["data", "stats", str(path), "--user-col", "²", "--item-col", "sku"])

    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


# Digit names where each suggested flag value is ambiguous too: `1` names column 3 and is the
# position of column `2`, whose name is the position of column `3`, and `3` names column 2.
LOOPING_HEADER = "ts,2,3,1\n829827514,u1,x,i1\n"


def test_ambiguous_digits_without_unambiguous_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", LOOPING_HEADER)

    from_stream = stream_error(path, user_col="1", item_col="3")
    from_hiertcn = hiertcn_error(path, format="csv", user_col="1", item_col="3")

    assert "--user-col 1 is ambiguous" in from_stream
    assert "--user-col 3 and --user-col 2 are ambiguous too, so rename the header cells" in (
        from_stream
    )
    assert "pass --user-col" not in from_stream
    assert from_stream == from_hiertcn


@pytest.mark.parametrize("spec", ["3", "2"])
def test_looping_suggestions_are_ambiguous(tmp_path: Path, spec: str) -> None:
    path = write(tmp_path / "events.csv", LOOPING_HEADER)

    message = stream_error(path, user_col=spec, item_col="1")

    assert f"--user-col {spec} is ambiguous" in message


def test_ambiguous_digits_suggest_only_unambiguous_values(tmp_path: Path) -> None:
    # `0` names column 4 and is the position of `user`; `4` is no name, `user` picks column 0.
    path = write(tmp_path / "events.csv", "user,item,ts,9,0\nu1,5,1600000000,u9,u0\n")

    message = stream_error(path, user_col="0")

    assert "pass --user-col 4 for the column named '0', or --user-col user for the column " in (
        message
    )
    assert "ambiguous too" not in message


DUPLICATE_HEADER = "user,item,ts,item\nu1,10,829827514,99\nu2,11,829828005,98\n"


def test_duplicate_default_column_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", DUPLICATE_HEADER)

    from_stream = stream_error(path)
    from_hiertcn = hiertcn_error(path, format="csv")

    assert "names columns 1 and 3 'item', so the default item column 'item'" in from_stream
    assert "pass the 0-based position (--item-col 1 or --item-col 3)" in from_stream
    assert "rename the header cells" in from_stream
    assert from_stream == from_hiertcn


def test_duplicate_named_column_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", DUPLICATE_HEADER)

    from_stream = stream_error(path, item_col="item")
    from_hiertcn = hiertcn_error(path, format="csv", item_col="item")

    assert "names columns 1 and 3 'item', so --item-col item could mean any of them" in (
        from_stream
    )
    assert from_stream == from_hiertcn


def test_duplicate_column_picked_by_position(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", DUPLICATE_HEADER)

    records = list(read_records(path, item_col="3"))
    raw = read_log(path, ReaderConfig(format="csv", item_col="3"))

    assert [record.fields["item"] for record in records] == ["99", "98"]
    assert list(raw.items) == ["99", "98"]


def test_duplicate_event_field_column_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "user,item,ts,type,type\nu1,10,829827514,a,b\n")

    message = stream_error(path)

    assert "names columns 3 and 4 'type', so the event field 'type' could mean any" in message
    assert "rename the header cells" in message


PARTIAL = {
    "events.csv": "user,item,ts\nu1,A,100\nu1,B,200\nu1,C,3",
    "events.jsonl": '{"user": "u1", "item": "A", "ts": 100}\n{"user": "u1", "item": "C", "ts": 3}',
}


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_last_line_without_newline_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    path = write(tmp_path / name, PARTIAL[name])
    line = PARTIAL[name].count("\n") + 1

    with caplog.at_level(logging.WARNING):
        records = list(read_records(path))
        raw = read_log(path)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["stream.records", "hiertcn.data.readers"]
    expected = f"{path}:{line}: the last line does not end with a newline"
    assert all(expected in r.getMessage() for r in warnings)
    assert "its last event may be incomplete" in warnings[0].getMessage()
    assert warnings[0].getMessage() == warnings[1].getMessage()
    assert records[-1].fields["item"] == "C"
    assert list(raw.items)[-1] == "C"


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n   ", "\n\n"])
def test_terminated_last_line_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(f"user,item,ts\nu1,A,100{ending}".encode())

    with caplog.at_level(logging.WARNING):
        list(read_records(path))
        read_log(path)

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_long_last_line_without_newline_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A last line longer than the block read from the end of the file.
    event = {"user": "u1", "item": "A", "ts": 100, "note": "x" * 200_000}
    path = write(tmp_path / "events.jsonl", json.dumps(event))

    with caplog.at_level(logging.WARNING, logger="stream.records"):
        list(read_records(path))

    (warning,) = [r.getMessage() for r in caplog.records if r.name == "stream.records"]
    assert f"{path}:1: the last line does not end with a newline" in warning
