"""Readers on logs that an own export often produces: a forgotten header flag, millisecond times
within one second, a file still being written, duplicate rows, long fields, and unknown names."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.log import build_event_log
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.errors import DataError

POSITIONS = {"user_col": "0", "item_col": "1", "time_col": "4"}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


# A headerless log in the Taobao layout, user,item,category,behavior,timestamp: user 1 makes the
# header cell "1" at column 0, which --item-col 1 matches by name.
HEADERLESS = "1,500,600,pv,1511544070\n2,501,601,pv,1511544080\n3,502,602,buy,1511544090\n"


def test_digit_column_matching_other_header_cell_rejected(tmp_path):
    path = write(tmp_path / "events.csv", HEADERLESS)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv", **POSITIONS))
    message = str(error.value)
    assert "--item-col 1 is ambiguous" in message
    assert "header name of column 0" in message
    assert "0-based position of the column named '500'" in message
    assert "pass --no-header" in message
    assert "pass --item-col 0" in message


def test_headerless_positions_with_no_header_read_every_row(tmp_path):
    path = write(tmp_path / "events.csv", HEADERLESS)
    raw = read_log(path, ReaderConfig(format="csv", header=False, **POSITIONS))
    assert list(raw.users) == ["1", "2", "3"]
    assert list(raw.items) == ["500", "501", "502"]


def test_all_numeric_header_row_rejected(tmp_path):
    path = write(tmp_path / "events.csv", "\n7,500,1511544070\n8,501,1511544080\n")
    config = ReaderConfig(format="csv", user_col="0", item_col="1", time_col="2")
    with pytest.raises(DataError) as error:
        read_log(path, config)
    message = str(error.value)
    assert "events.csv:2: every cell of the header row ['7', '500', '1511544070']" in message
    assert "pass --no-header" in message


def test_integer_time_header_cell_rejected(tmp_path):
    path = write(tmp_path / "events.csv", "u7,i500,1511544070\nu8,i501,1511544080\n")
    config = ReaderConfig(format="csv", user_col="0", item_col="1", time_col="2")
    with pytest.raises(DataError) as error:
        read_log(path, config)
    message = str(error.value)
    assert "events.csv:1:" in message
    assert "names the time column (column 2) '1511544070', an integer" in message
    assert "pass --no-header" in message


def test_pandas_position_header_is_read(tmp_path):
    path = write(tmp_path / "events.csv", "0,1,2\nu,i,5\n")
    raw = read_log(path, ReaderConfig(format="csv", user_col="0", item_col="1", time_col="2"))
    assert list(raw.users) == ["u"]
    assert list(raw.items) == ["i"]
    assert list(raw.timestamps) == [5]


def test_digit_name_at_own_position_read(tmp_path):
    path = write(tmp_path / "events.csv", "user,1,timestamp\nu,i,5\n")
    raw = read_log(path, ReaderConfig(format="csv", item_col="1"))
    assert list(raw.items) == ["i"]


def test_milliseconds_order_events_within_second(tmp_path):
    # Item b at +900 ms is logged before item a at +100 ms.
    records = [
        {"user": "u", "item": "b", "ts": 1_600_000_000_900},
        {"user": "u", "item": "a", "ts": 1_600_000_000_100},
        {"user": "u", "item": "c", "ts": 1_600_000_001_000},
    ]
    path = write(tmp_path / "events.jsonl", jsonl(records))
    log = build_event_log(read_log(path, ReaderConfig(time_unit="ms")))
    assert [log.vocab.ids[row] for row in log.items] == ["a", "b", "c"]
    assert list(log.timestamps) == [1_600_000_000, 1_600_000_000, 1_600_000_001]


def test_equal_milliseconds_keep_file_order(tmp_path):
    path = write(
        tmp_path / "events.csv",
        "user,item,ts\nu,b,1600000000500\nu,a,1600000000500\nu,c,1600000000100\n",
    )
    log = build_event_log(read_log(path, ReaderConfig(time_unit="ms")))
    assert [log.vocab.ids[row] for row in log.items] == ["c", "b", "a"]


def test_negative_milliseconds_floor_to_earlier_second(tmp_path):
    # The last event keeps the log after 1973, which a log read in milliseconds must reach.
    path = write(
        tmp_path / "events.csv",
        "user,item,ts\nu,a,-1\nu,b,-1000\nu,c,-1001\nu,d,1600000000000\n",
    )
    raw = read_log(path, ReaderConfig(time_unit="ms"))
    assert list(raw.timestamps) == [-1, -1, -2, 1_600_000_000]
    log = build_event_log(raw)
    assert [log.vocab.ids[row] for row in log.items] == ["c", "b", "a", "d"]


def test_milliseconds_after_year_9999_rejected(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,ts\nu,a,1600000000000000\n")
    with pytest.raises(DataError, match=r"events\.csv:2: timestamp 1600000000000000 is after"):
        read_log(path, ReaderConfig(time_unit="ms"))


def test_fractional_seconds_message_keeps_only_order(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,timestamp\nu,i,1600000000.5\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "keep the fraction" not in message
    assert "To keep the order of events within a second" in message
    assert "stored in whole seconds" in message


def test_partial_last_csv_line_says_file_incomplete(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,timestamp\nu,a,1\n\nu,b")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "events.csv:4: row has 2 fields" in message
    assert "line 4 is the last line of the file and does not end with a newline" in message
    assert f"head -n 3 {path} > {tmp_path / 'events.complete.csv'}" in message
    assert "--delimiter" not in message


@pytest.mark.skipif(shutil.which("head") is None, reason="needs the head command")
def test_partial_line_command_makes_readable_copy(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,timestamp\nu,a,1\nu,b")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    command = str(error.value).rsplit("`", 2)[-2]
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    raw = read_log(tmp_path / "events.complete.csv", ReaderConfig(format="csv"))
    assert list(raw.items) == ["a"]


def test_short_last_line_with_newline_keeps_delimiter_fix(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,timestamp\nu,a,1\nu,b\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "check that --delimiter" in message
    assert "does not end with a newline" not in message


def test_partial_last_line_bad_timestamp_says_file_incomplete(tmp_path):
    path = write(tmp_path / "events.csv", "user,item,timestamp\nu,a,1\nu,b,")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "events.csv:3: timestamp '' is not an integer" in message
    assert "However, line 3 is the last line of the file" in message


def test_partial_last_jsonl_line_says_file_incomplete(tmp_path):
    path = write(
        tmp_path / "events.jsonl",
        jsonl([{"user": "u", "item": "a", "ts": 1}]) + '{"user": "u", "item": "b", "ts": 15',
    )
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "events.jsonl:2: invalid JSON" in message
    assert "line 2 is the last line of the file and does not end with a newline" in message
    assert "head -n 1" in message


def test_invalid_jsonl_line_gives_fix(tmp_path):
    path = write(
        tmp_path / "events.jsonl",
        '{"user": "u", "item": "a", "ts": 1}\n{"user": "u" "item": "b"}\n',
    )
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "events.jsonl:2: invalid JSON (Expecting ',' delimiter at character 14)" in message
    assert """'{"user": "u" "item": "b"}'""" in message
    assert "each line must be one complete JSON object, so fix or remove this line" in message


def test_exact_duplicates_kept_and_counted(tmp_path, caplog):
    path = write(tmp_path / "events.csv", "user,item,ts\nu,a,1\nu,b,2\nu,a,1\nv,a,1\nu,a,1\n")
    with caplog.at_level(logging.INFO, logger="hiertcn.data"):
        raw = read_log(path, ReaderConfig(format="csv"))
    assert len(raw) == 5
    lines = [message for message in caplog.messages if "earlier event" in message]
    assert len(lines) == 1
    expected = "user, item and timestamp of an earlier event: 2, for example user u, item a"
    assert expected in lines[0]
    assert "They are kept" in lines[0]


def test_distinct_milliseconds_are_not_duplicates(tmp_path, caplog):
    path = write(tmp_path / "events.csv", "user,item,ts\nu,a,1600000000100\nu,a,1600000000200\n")
    with caplog.at_level(logging.INFO, logger="hiertcn.data"):
        raw = read_log(path, ReaderConfig(format="csv", time_unit="ms"))
    assert list(raw.timestamps) == [1_600_000_000, 1_600_000_000]
    assert "earlier event" not in caplog.text


def test_long_field_in_unused_column_is_read(tmp_path):
    note = "x" * 200_000
    path = write(tmp_path / "events.csv", f"user,item,ts,note\nu,a,1,{note}\nu,b,2,ok\n")
    raw = read_log(path, ReaderConfig(format="csv"))
    assert list(raw.items) == ["a", "b"]


def test_long_quoted_header_field_is_detected(tmp_path):
    path = write(tmp_path / "events.csv", f'user,item,ts,"{"n" * 200_000}"\nu,a,1,ok\n')
    raw = read_log(path)
    assert list(raw.items) == ["a"]


TYPED = "user,item,ts,kind\nu,a,1,pv\nu,b,2,buy\nu,c,3,pv\n"


def test_event_types_partly_unmatched_warn(tmp_path, caplog):
    path = write(tmp_path / "events.csv", TYPED)
    config = ReaderConfig(format="csv", event_type_col="kind", event_types=("pv", "click"))
    with caplog.at_level(logging.WARNING, logger="hiertcn.data"):
        raw = read_log(path, config)
    assert list(raw.items) == ["a", "c"]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    expected = "--event-types click matched no event, so only the events of pv are kept"
    assert expected in warnings[0]
    assert "the event types in the file are pv, buy" in warnings[0]


def test_event_types_all_matched_do_not_warn(tmp_path, caplog):
    path = write(tmp_path / "events.csv", TYPED)
    config = ReaderConfig(format="csv", event_type_col="kind", event_types=("pv", "buy"))
    with caplog.at_level(logging.WARNING, logger="hiertcn.data"):
        read_log(path, config)
    assert caplog.records == []


def test_tsv_with_unknown_names_lists_header(tmp_path):
    path = write(tmp_path / "events.tsv", "event_ts\tcustomer_ref\tproduct_sku\n5\tc1\ts1\n")
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "it is a TSV file" in message
    assert "first line ['event_ts', 'customer_ref', 'product_sku']" in message
    assert "Pass --user-col, --item-col and --time-col" in message


def test_jsonl_with_unknown_keys_names_missing_flags(tmp_path):
    record = {"customer_id": "c1", "item": "s1", "ts_ms": 5}
    path = write(tmp_path / "events.jsonl", jsonl([record]))
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "it is a JSON Lines file whose first object has the keys" in message
    assert "['customer_id', 'item', 'ts_ms']" in message
    assert "no known user or time key such as user_id or timestamp" in message
    assert "Pass --user-col and --time-col with the keys that hold them" in message


def test_taobao_head_rows_keep_their_count(shared_data):
    # The public head file has no header, so --no-header keeps all of its rows.
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    raw = read_log(path, ReaderConfig(format="csv", header=False, **POSITIONS))
    assert len(raw) == 84_287
    assert len(np.unique(raw.items)) == 55_233
    with pytest.raises(DataError, match="--item-col 1 is ambiguous"):
        read_log(path, ReaderConfig(format="csv", **POSITIONS))


README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(shutil.which("jq") is None, reason="needs jq")
def test_readme_jq_command_flattens_nested_log(tmp_path):
    text = README.read_text(encoding="utf-8")
    command = text[text.index("jq -c '{user:") : text.index("> events.jsonl")] + "> events.jsonl"
    records = [
        {"customer": {"id": "C1"}, "product": {"sku": "S7"}, "time": "2017-11-24T17:21:10Z"},
        {"customer": {"id": "C1"}, "product": {"sku": "S9"}, "time": "2017-11-24T17:25:00Z"},
    ]
    write(tmp_path / "nested.jsonl", jsonl(records))
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    raw = read_log(tmp_path / "events.jsonl")
    assert list(raw.users) == ["C1", "C1"]
    assert list(raw.items) == ["S7", "S9"]
    assert list(raw.timestamps) == [1_511_544_070, 1_511_544_300]


TRIVAGO_HEADER = (
    "user_id,session_id,timestamp,step,action_type,reference,platform,city,device,"
    "current_filters,impressions,prices\n"
)
# One small file per format: (file name, text).
NO_HEADER_REJECTED = {
    "jsonl": ("events.jsonl", jsonl([{"user": "u", "item": "a", "ts": 1}])),
    "otto": (
        "train.jsonl",
        jsonl([{"session": 1, "events": [{"aid": 5, "ts": 1659304800000, "type": "clicks"}]}]),
    ),
    "trivago": (
        "train.csv",
        TRIVAGO_HEADER + "u,s,1541030408,1,clickout item,7,DE,Berlin,desktop,,7|8,10|20\n",
    ),
}


@pytest.mark.parametrize("log_format", sorted(NO_HEADER_REJECTED))
@pytest.mark.parametrize("given_format", ["auto", "explicit"])
def test_no_header_rejected_for_json_and_trivago(tmp_path, log_format, given_format):
    name, text = NO_HEADER_REJECTED[log_format]
    path = write(tmp_path / name, text)
    config_format = log_format if given_format == "explicit" else "auto"
    read_log(path, ReaderConfig(format=config_format))

    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format=config_format, header=False))

    message = str(error.value)
    assert "--no-header applies only to CSV and TSV files" in message
    assert f"but {path} has the format {log_format}" in message
    assert "drop --no-header, or pass --format csv" in message


@pytest.mark.parametrize(
    ("name", "text", "log_format"),
    [
        ("u.data", "1\t10\t5\t881250949\n2\t11\t3\t881250950\n", "movielens"),
        ("UserBehavior.csv", "1,10,100,pv,1511544070\n2,11,101,buy,1511544080\n", "taobao"),
    ],
)
def test_no_header_accepted_for_movielens_and_taobao(tmp_path, name, text, log_format):
    path = write(tmp_path / name, text)

    raw = read_log(path, ReaderConfig(format=log_format, header=False))

    assert len(raw) == 2
