"""Tests of the event-file readers on logs that `hiertcn data` reads: other column names, TSV,
JSON keys and string timestamps, through `read_records` and the `replay` command."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import msgpack
import pytest

from hiertcn.cli import main as hiertcn_main
from stream.cli import main as stream_main
from stream.events import DeadLetter, Event, EventConfig, Position, decode_event
from stream.records import EventFileError, detect_format, encode_fields, read_records
from tests.stream.conftest import NUM_ITEMS

# Filters off, so that `hiertcn data stats` keeps every event of a small log.
NO_FILTERS = ("--min-item-count", "0", "--min-user-events", "0")
SHOP_FLAGS = ("--user-col", "customer_id", "--item-col", "category")


def shop_rows() -> list[tuple[str, str, int]]:
    """Return 20 events of 4 customers, in time order: (customer, category, Unix seconds)."""
    rows = [
        (f"C{user:04d}", str((3 * user + step) % NUM_ITEMS), 1_600_000_000 + 600 * step + user)
        for user in range(4)
        for step in range(5)
    ]
    return sorted(rows, key=lambda row: row[2])


def write_shop_log(path: Path, time_key: str) -> int:
    """Write `shop_rows` as a TSV file or a JSON Lines file (by suffix); return the events."""
    rows = shop_rows()
    if path.suffix == ".tsv":
        lines = [f"customer_id\tcategory\t{time_key}"]
        lines += [f"{user}\t{item}\t{ts}" for user, item, ts in rows]
    else:
        lines = [
            json.dumps({"customer_id": user, "category": item, time_key: ts, "price": 9.5})
            for user, item, ts in rows
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(rows)


@pytest.mark.parametrize(("name", "time_key"), [("shop.tsv", "ts"), ("shop.jsonl", "clock")])
def test_replay_reads_log_with_data_flags(
    onnx_bundle_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    time_key: str,
) -> None:
    path, output = tmp_path / name, tmp_path / "recs.jsonl"
    count = write_shop_log(path, time_key)
    flags = [*SHOP_FLAGS, "--time-col", time_key]

    assert hiertcn_main(["data", "stats", str(path), *flags, *NO_FILTERS]) == 0
    items = len({item for _, item, _ in shop_rows()})
    assert f"| all | 4 | {items} | {count} |" in capsys.readouterr().out

    argv = ["replay", "--events", str(path), "--bundle", str(onnx_bundle_dir), *flags]
    code = stream_main([*argv, "--output", str(output)])

    printed = capsys.readouterr().out
    assert code == 0
    assert f"events           {count}" in printed
    assert "rejected         0" in printed
    recommendations = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["user"] for line in recommendations] == [user for user, _, _ in shop_rows()]


def test_tsv_without_column_flags_names_them(tmp_path: Path) -> None:
    path = tmp_path / "shop.tsv"
    write_shop_log(path, "ts")

    with pytest.raises(EventFileError) as raised:
        read_records(path, "csv")

    message = str(raised.value)
    assert "has no column user and no column item" in message
    assert "['customer_id', 'category', 'ts']" in message
    assert "pass --user-col, --item-col and --time-col" in message


def test_unknown_header_detected_with_column_flags(tmp_path: Path) -> None:
    path = tmp_path / "shop.tsv"
    path.write_text("customer_ref\tsku\tevent_ts\nC1\t5\t1600000000\n", encoding="utf-8")

    with pytest.raises(EventFileError, match="needs --user-col, --item-col and --time-col"):
        detect_format(path)
    (record,) = read_records(path, user_col="customer_ref", item_col="sku", time_col="event_ts")

    assert record.fields == {"user": "C1", "item": "5", "ts": 1600000000.0}


def test_csv_columns_by_position(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("ts,category,note,customer\n1600000000,5,x,C1\n", encoding="utf-8")

    (record,) = read_records(path, user_col="3", item_col="1", time_col="0")

    assert record.fields == {"user": "C1", "item": "5", "ts": 1600000000.0, "note": "x"}


def test_csv_numeric_header_names(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("user,item,ts,9,0\nu1,5,1600000000,u9,u0\n", encoding="utf-8")

    (record,) = read_records(path, user_col="9")  # a name, because there is no column 9

    assert record.fields == {"user": "u9", "item": "5", "ts": 1600000000.0, "0": "u0"}
    with pytest.raises(EventFileError) as raised:
        read_records(path, user_col="0")
    message = str(raised.value)
    assert "--user-col 0 is ambiguous" in message
    assert "pass --user-col 4 for the column named '0', or --user-col user for the column " in (
        message
    )
    assert "or pass --no-header if the first line is an event" in message


def test_chosen_column_replaces_default_name(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("user,customer,item,ts\nrow-id,C1,5,1600000000\n", encoding="utf-8")

    (record,) = read_records(path, user_col="customer")

    assert record.fields == {"user": "C1", "item": "5", "ts": 1600000000.0}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"user_col": "customer"}, "no column 'customer' (named by --user-col)"),
        ({"time_col": "9"}, "no column '9' (named by --time-col)"),
        ({"user_col": ""}, "no column '' (named by --user-col)"),
        ({"user_col": "item"}, "the user and the item are read from one column, 'item' (column 1)"),
    ],
)
def test_csv_column_flag_errors(tmp_path: Path, columns: dict[str, str], message: str) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("user,item,ts\nu1,5,1600000000\n", encoding="utf-8")

    with pytest.raises(EventFileError, match=re.escape(message)):
        read_records(path, **columns)


def test_jsonl_keys_renamed(tmp_path: Path) -> None:
    path = tmp_path / "shop.jsonl"
    event = {"user": "row-id", "customer": "C1", "sku": 5, "at": 1600000000, "type": "pv"}
    path.write_text(json.dumps(event) + "\n", encoding="utf-8")

    (record,) = read_records(path, user_col="customer", item_col="sku", time_col="at")

    assert record.fields == {"user": "C1", "item": 5, "ts": 1600000000, "type": "pv"}


def test_jsonl_swapped_keys(tmp_path: Path) -> None:
    path = tmp_path / "shop.jsonl"
    path.write_text('{"user": "i1", "item": "u1", "ts": 1600000000}\n', encoding="utf-8")

    (record,) = read_records(path, user_col="item", item_col="user")

    assert record.fields == {"user": "u1", "item": "i1", "ts": 1600000000}


def test_jsonl_missing_key_is_invalid_record(tmp_path: Path) -> None:
    path = tmp_path / "shop.jsonl"
    lines = ['{"customer": "C1", "item": 5, "ts": 1600000000}', '{"user": "u", "item": 5}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    first, second = read_records(path, user_col="customer")

    assert first.fields == {"user": "C1", "item": 5, "ts": 1600000000}
    assert second.fields is None
    assert second.error == "key 'customer', which --user-col names, is missing"
    assert second.location == "line 2"


@pytest.mark.parametrize(
    ("name", "content", "log_format"),
    [
        ("log.msgpack", msgpack.packb({"user": "u", "item": 1, "ts": 1}), "msgpack"),
        ("log.jsonl", b'{"session": 1, "events": [{"aid": 5, "ts": 1, "type": "c"}]}\n', "otto"),
    ],
)
def test_column_flags_rejected_for_fixed_formats(
    tmp_path: Path, name: str, content: bytes, log_format: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(EventFileError) as raised:
        read_records(path, user_col="customer", item_col="sku")

    message = str(raised.value)
    assert message.startswith("--user-col and --item-col apply only to csv, jsonl, movielens")
    assert f"has the format {log_format}" in message


def test_taobao_item_col_as_in_hiertcn(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2268318,2520377,pv,1511544070\n", encoding="utf-8")

    (record,) = read_records(path, "taobao", item_col="category")

    assert record.fields == {"user": "1", "item": "2520377", "ts": 1511544070, "type": "pv"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"1511544070"', 1511544070),
        ('"-3600"', -3600),
        ('"1511544070000"', 1511544070000),
        ('"1511544070.5"', "1511544070.5"),
        ('" 1511544070"', " 1511544070"),
        ('"2017-11-25T01:21:10+08:00"', "2017-11-25T01:21:10+08:00"),
    ],
)
def test_jsonl_string_ts_of_digits_becomes_integer(
    tmp_path: Path, text: str, expected: int | str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(f'{{"user": "u", "item": 5, "ts": {text}}}\n', encoding="utf-8")

    (record,) = read_records(path)

    assert record.fields["ts"] == expected
    assert type(record.fields["ts"]) is type(expected)


@pytest.mark.parametrize("text", ["1234567890123456789", "99999999999999999999999", "-" + "9" * 30])
def test_jsonl_long_digit_string_ts_out_of_range(tmp_path: Path, text: str) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"user": "u", "item": 5, "ts": text}), '{"user": "u", "item": 5, "ts": 1}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    first, second = read_records(path)

    assert first.fields is None
    assert f"is a string of {len(text.lstrip('-'))} digits, out of range" in first.error
    assert "has type str" not in first.error
    assert second.fields == {"user": "u", "item": 5, "ts": 1}


def test_string_ts_stays_invalid_in_kafka_and_msgpack(tmp_path: Path) -> None:
    fields = {"user": "u", "item": "5", "ts": "1511544070"}
    path = tmp_path / "events.msgpack"
    path.write_bytes(msgpack.packb(fields))

    (record,) = read_records(path)
    result = decode_event(None, encode_fields(record.fields), Position("t", 0, 0), {"5": 0})

    assert record.fields == fields
    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_ts"


def test_replay_accepts_string_ts_in_milliseconds(
    onnx_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "strts.jsonl"
    rows = shop_rows()
    lines = [
        json.dumps({"user": user, "item": item, "ts": str(ts * 1000), "type": "pv"})
        for user, item, ts in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    argv = ["replay", "--events", str(path), "--bundle", str(onnx_bundle_dir)]

    assert stream_main([*argv, "--ts-unit", "ms"]) == 0

    printed = capsys.readouterr().out
    assert f"events           {len(rows)}" in printed
    assert "rejected         0" in printed


@pytest.mark.parametrize("number", ["99999999999999999999999", "-9223372036854775809", "9" * 5000])
def test_jsonl_integer_beyond_64_bits_is_invalid_record(tmp_path: Path, number: str) -> None:
    path = tmp_path / "events.jsonl"
    lines = [f'{{"user": "u", "item": 5, "ts": {number}}}', '{"user": "u", "item": 5, "ts": 1}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    first, second = read_records(path)

    assert first.fields is None
    assert "outside the 64-bit range that events can carry" in first.error
    assert len(first.error) < 200
    assert second.fields == {"user": "u", "item": 5, "ts": 1}
    result = decode_event(None, encode_fields(second.fields), Position("t", 0, 0), {"5": 0})
    assert isinstance(result, Event)


def test_jsonl_largest_64_bit_integers_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"user": 18446744073709551615, "item": -9223372036854775808, "ts": 1}\n',
        encoding="utf-8",
    )

    (record,) = read_records(path)
    result = decode_event(
        None, encode_fields(record.fields), Position("t", 0, 0), {}, EventConfig()
    )

    assert record.fields["user"] == 2**64 - 1
    assert record.fields["item"] == -(2**63)
    assert isinstance(result, DeadLetter)
    assert result.reason == "unknown_item"


def test_csv_blank_rows_skipped(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("user,item,ts\nu1,5,1\n\n  \n,,\nu2,6,2\n", encoding="utf-8")

    records = list(read_records(path))

    assert [record.fields for record in records] == [
        {"user": "u1", "item": "5", "ts": 1.0},
        {"user": "u2", "item": "6", "ts": 2.0},
    ]
    assert [record.number for record in records] == [0, 1]
    assert [record.line for record in records] == [2, 6]


def test_csv_long_unused_field_read(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    note = "x" * 200_000  # above the csv module's default field size limit of 131072
    path.write_text(f"user,item,ts,note\nu1,5,1,{note}\nu2,6,2,ok\n", encoding="utf-8")

    first, second = read_records(path)

    assert first.fields == {"user": "u1", "item": "5", "ts": 1.0, "note": note}
    assert second.fields == {"user": "u2", "item": "6", "ts": 2.0, "note": "ok"}


def test_csv_error_is_invalid_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(f"user,item,ts\nu1,5,1\nu2,{'6' * 50},2\nu3,7,3\n", encoding="utf-8")
    monkeypatch.setattr("stream.records_csv._CSV_FIELD_SIZE_LIMIT", 20)
    previous = csv.field_size_limit(20)
    try:
        records = list(read_records(path))
    finally:
        csv.field_size_limit(previous)

    assert [record.fields is None for record in records] == [False, True, False]
    assert records[1].error == "malformed CSV row: field larger than field limit (20)"
    assert records[1].location == "line 3"
    assert records[2].fields == {"user": "u3", "item": "7", "ts": 3.0}


def test_otto_time_order_keeps_milliseconds_within_second(tmp_path: Path) -> None:
    # Session 1 logs two events of one second in reverse order: 900 ms, then 100 ms.
    second_ms = 1_659_304_800_000
    sessions = [
        {
            "session": 1,
            "events": [
                {"aid": 11, "ts": second_ms + 900, "type": "clicks"},
                {"aid": 22, "ts": second_ms + 100, "type": "clicks"},
                {"aid": 33, "ts": second_ms + 1000, "type": "clicks"},
            ],
        },
        {"session": 2, "events": [{"aid": 44, "ts": second_ms + 500, "type": "clicks"}]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(session) + "\n" for session in sessions), encoding="utf-8")

    by_time = list(read_records(path, order="time"))
    by_file = list(read_records(path, order="file"))

    assert [record.fields["item"] for record in by_time] == ["22", "44", "11", "33"]
    assert [record.number for record in by_time] == [1, 3, 0, 2]
    assert [record.fields["item"] for record in by_file] == ["11", "22", "33", "44"]
    assert {record.fields["ts"] for record in by_time[:3]} == {second_ms // 1000}


def test_otto_time_order_matches_hiertcn_data(tmp_path: Path) -> None:
    from hiertcn.data.log import build_event_log
    from hiertcn.data.readers import read_log

    second_ms = 1_659_304_800_000
    events = [
        {"aid": aid, "ts": second_ms + ms, "type": "clicks"}
        for aid, ms in [(1, 700), (2, 300), (3, 300), (4, 0), (5, 1500)]
    ]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"session": 7, "events": events}) + "\n", encoding="utf-8")

    log = build_event_log(read_log(path))
    hiertcn_items = [log.vocab.ids[row] for row in log.items]
    replay_items = [record.fields["item"] for record in read_records(path, order="time")]

    assert hiertcn_items == ["4", "2", "3", "1", "5"]
    assert replay_items == hiertcn_items
