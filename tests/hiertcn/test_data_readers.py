"""Readers: the real logs in the shared data folder, the generic formats, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiertcn.data.log import build_event_log
from hiertcn.data.readers import ReaderConfig, detect_format, read_log
from hiertcn.errors import DataError

# (relative path, events, users, items, sessions at 30 min) from each folder's README.
REAL_LOGS = [
    ("movielens-latest-small/ratings.csv", 100_836, 610, 9_724, 7_145),
    ("movielens-100k/u.data", 100_000, 943, 1_682, 2_793),
    ("taobao-userbehavior-head/UserBehavior_head.csv", 84_287, 814, 55_233, 14_096),
    ("otto-sample/train.jsonl", 862, 20, 510, 144),
]


@pytest.mark.parametrize(("relative", "events", "users", "items", "sessions"), REAL_LOGS)
def test_real_log_counts_match_readme(shared_data, relative, events, users, items, sessions):
    log = build_event_log(read_log(shared_data / relative), gap=1800)
    assert log.num_events == events
    assert log.num_users == users
    assert log.num_items == items
    assert log.num_sessions == sessions


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("movielens-latest-small/ratings.csv", "movielens"),
        ("movielens-100k/u.data", "movielens"),
        ("taobao-userbehavior-head/UserBehavior_head.csv", "taobao"),
        ("otto-sample/train.jsonl", "otto"),
        ("trivago-sample/train_small.csv", "trivago"),
    ],
)
def test_auto_format_detects_real_logs(shared_data, relative, expected):
    assert detect_format(shared_data / relative) == expected


def test_taobao_category_as_item(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    raw = read_log(path, ReaderConfig(format="taobao", item_col="category"))
    assert len(np.unique(raw.items)) == 2_911
    assert raw.items[0] == "2520377"


def test_taobao_event_types_filter(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    raw = read_log(path, ReaderConfig(format="taobao", event_types=("pv",)))
    assert len(raw) == 75_693
    assert set(raw.event_types) == {"pv"}


def test_otto_timestamps_are_floored_seconds(shared_data):
    raw = read_log(shared_data / "otto-sample" / "train.jsonl")
    assert raw.timestamps.dtype == np.int64
    assert raw.timestamps[0] == 1659304800  # 1659304800025 ms
    assert raw.users[0] == "0"
    assert raw.event_types is not None
    assert set(raw.event_types) == {"clicks", "carts", "orders"}


def test_trivago_clickouts_carry_impressions(shared_data):
    raw = read_log(shared_data / "trivago-sample" / "train_small.csv")
    assert raw.impression_offsets is not None
    assert raw.event_types is not None
    lengths = np.diff(raw.impression_offsets)
    clickouts = raw.event_types == "clickout item"
    assert clickouts.sum() == 12
    assert (lengths[clickouts] >= 23).all()
    assert (lengths[~clickouts] == 0).all()
    for event in np.flatnonzero(clickouts):
        shown = raw.impressions[raw.impression_offsets[event] : raw.impression_offsets[event + 1]]
        assert raw.items[event] in set(shown)


def test_trivago_impressions_map_to_rows(shared_data):
    log = build_event_log(read_log(shared_data / "trivago-sample" / "train_small.csv"))
    assert log.impressions is not None
    assert log.impressions.dtype == np.int32
    known = log.impressions[log.impressions >= 0]
    assert (known < log.num_items).all()
    assert (log.impressions == -1).any()


def test_trivago_test_file_skips_hidden_targets(shared_data):
    raw = read_log(shared_data / "trivago-sample" / "test_small.csv")
    assert "" not in set(raw.items)
    assert all(item.isdigit() for item in raw.items)


def skipped_lines(caplog) -> list[str]:
    """Return the messages of the trivago reader that count skipped rows."""
    return [
        record.getMessage().split(": ", 1)[1]
        for record in caplog.records
        if record.name == "hiertcn.data.delimited" and "skipped" in record.getMessage()
    ]


def test_trivago_counts_rows_of_other_action_types(shared_data, caplog):
    with caplog.at_level("INFO", logger="hiertcn.data.delimited"):
        raw = read_log(shared_data / "trivago-sample" / "train_small.csv")
    assert len(raw) == 997
    assert skipped_lines(caplog) == [
        "skipped 13 rows of action types without an item reference (filter selection 7, "
        "change of sort order 5, search for destination 1)"
    ]


def test_trivago_test_file_counts_both_skips(shared_data, caplog):
    with caplog.at_level("INFO", logger="hiertcn.data.delimited"):
        raw = read_log(shared_data / "trivago-sample" / "test_small.csv")
    # 1,010 rows: 85 of other action types and 52 item actions with an empty reference.
    assert len(raw) == 873
    assert skipped_lines(caplog) == [
        "skipped 85 rows of action types without an item reference (search for destination "
        "31, change of sort order 26, filter selection 19, search for poi 9)",
        "skipped 52 item actions with an empty reference, such as the clickouts whose item the "
        "challenge's test file hides",
    ]


def test_trivago_without_skipped_rows_logs_no_count(tmp_path, caplog):
    header = "user_id,session_id,timestamp,step,action_type,reference,impressions"
    path = tmp_path / "trivago.csv"
    path.write_text(f"{header}\nu,s,1,1,clickout item,7,7|8\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="hiertcn.data.delimited"):
        raw = read_log(path, ReaderConfig(format="trivago"))
    assert len(raw) == 1
    assert skipped_lines(caplog) == []


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_csv_columns_by_name(tmp_path):
    path = write(tmp_path / "log.csv", "ts,who,what,cat\n10,a,x,c1\n20,b,y,c2\n")
    raw = read_log(path, ReaderConfig(format="csv", user_col="who", item_col="cat", time_col="ts"))
    assert list(raw.users) == ["a", "b"]
    assert list(raw.items) == ["c1", "c2"]
    assert list(raw.timestamps) == [10, 20]


def test_generic_csv_columns_by_position_without_header(tmp_path):
    path = write(tmp_path / "log.txt", "x;a;10\ny;b;20\n")
    config = ReaderConfig(
        format="csv", header=False, delimiter=";", user_col="1", item_col="0", time_col="2"
    )
    raw = read_log(path, config)
    assert list(raw.users) == ["a", "b"]
    assert list(raw.items) == ["x", "y"]


def test_generic_tsv_delimiter_from_suffix(tmp_path):
    path = write(tmp_path / "log.tsv", "user\titem\ttimestamp\nu\ti\t5\n")
    raw = read_log(path, ReaderConfig(format="csv"))
    assert list(raw.items) == ["i"]


def test_generic_csv_milliseconds_floor(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1659304800999\nu,j,-1\n")
    raw = read_log(path, ReaderConfig(format="csv", time_unit="ms"))
    assert list(raw.timestamps) == [1659304800, -1]


def test_generic_csv_impressions_column(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp,shown\nu,i,1,i|j|k\nu,j,2,\n")
    raw = read_log(path, ReaderConfig(format="csv", impressions_col="shown"))
    assert list(raw.impression_offsets) == [0, 3, 3]
    assert list(raw.impressions) == ["i", "j", "k"]


def test_generic_jsonl_numbers_and_strings_are_same_item(tmp_path):
    lines = [
        {"user": 1, "item": 42, "timestamp": 1, "shown": [42, "7"]},
        {"user": "1", "item": "42", "timestamp": 2},
    ]
    path = write(tmp_path / "log.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    raw = read_log(path, ReaderConfig(format="jsonl", impressions_col="shown"))
    assert list(raw.users) == ["1", "1"]
    assert list(raw.items) == ["42", "42"]
    assert list(raw.impressions) == ["42", "7"]


def test_bad_timestamp_names_file_line_and_value(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1\nu,j,12x\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert f"{path}:3" in message
    assert "'12x'" in message


def test_float_timestamp_is_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1.5\n")
    with pytest.raises(DataError, match=r"log.csv:2: timestamp '1.5' is not an integer"):
        read_log(path, ReaderConfig(format="csv"))


def test_short_row_names_line(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1\nu,j\n")
    with pytest.raises(DataError, match=r"log.csv:3: row has 2 fields"):
        read_log(path, ReaderConfig(format="csv"))


def test_milliseconds_read_as_seconds_are_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1659304800025000\n")
    with pytest.raises(DataError, match="--time-unit ms"):
        read_log(path, ReaderConfig(format="csv"))


def test_seconds_read_as_milliseconds_are_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,ts\nu,i,1600000000\nu,j,1600000060\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv", time_unit="ms"))
    message = str(error.value)
    assert f"{path}:3: the latest timestamp, 1600000060, is before 1973" in message
    assert "pass --time-unit s" in message


def test_milliseconds_from_zero_advice(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,ts\nu,i,0\nu,j,2500\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv", time_unit="ms"))
    message = str(error.value)
    assert f"{path}:3: the latest timestamp, 2500, is before 1973" in message
    assert "add that start's Unix time in milliseconds to every timestamp" in message


def test_seconds_read_as_milliseconds_jsonl_rejected(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"user": "u", "item": "i", "ts": 1600000000}\n')
    with pytest.raises(DataError, match="pass --time-unit s"):
        read_log(path, ReaderConfig(format="jsonl", time_unit="ms"))


def test_milliseconds_after_1973_are_accepted(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,ts\nu,i,10\nu,j,94694400000\n")
    raw = read_log(path, ReaderConfig(format="csv", time_unit="ms"))
    assert list(raw.timestamps) == [0, 94694400]


def write_movielens_ms(path: Path) -> Path:
    return write(path, "userId,movieId,rating,timestamp\n1,10,4.0,964982703000\n")


def test_movielens_milliseconds_advice_gives_csv_command(tmp_path):
    path = write_movielens_ms(tmp_path / "ratings.csv")
    command = (
        "--format csv --user-col userId --item-col movieId --time-col timestamp --time-unit ms"
    )
    with pytest.raises(DataError) as error:
        read_log(path)
    assert f"read it with {command}" in str(error.value)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="movielens", time_unit="ms"))
    assert f"read it with {command}" in str(error.value)
    assert "drop --time-unit or use --format csv" not in str(error.value)


def test_movielens_milliseconds_advice_runs(tmp_path):
    path = write_movielens_ms(tmp_path / "ratings.csv")
    config = ReaderConfig(
        format="csv", user_col="userId", item_col="movieId", time_col="timestamp", time_unit="ms"
    )
    assert list(read_log(path, config).timestamps) == [964982703]


@pytest.mark.parametrize(
    ("name", "line", "delimiter"),
    [("u.data", "1\t10\t4\t{}", "\\t"), ("ratings.dat", "1::10::4::{}", "::")],
)
def test_headerless_movielens_milliseconds_advice_runs(tmp_path, name, line, delimiter):
    path = write(tmp_path / name, line.format(964982703000) + "\n")
    with pytest.raises(DataError) as error:
        read_log(path)
    expected = (
        f"--format csv --no-header --delimiter '{delimiter}' --user-col 0 --item-col 1 "
        "--time-col 3 --time-unit ms"
    )
    assert expected in str(error.value)
    config = ReaderConfig(
        format="csv",
        header=False,
        delimiter=delimiter.replace("\\t", "\t"),
        user_col="0",
        item_col="1",
        time_col="3",
        time_unit="ms",
    )
    assert list(read_log(path, config).timestamps) == [964982703]


def test_invalid_json_line_names_line(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"session": 1, "events": []}\n{"session": 2,\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: invalid JSON"):
        read_log(path, ReaderConfig(format="otto"))


def test_otto_missing_key_names_line(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"session": 1, "events": [{"aid": 5, "type": "c"}]}\n')
    with pytest.raises(DataError, match=r"log.jsonl:1: key 'ts' missing"):
        read_log(path, ReaderConfig(format="otto"))


def test_empty_file_is_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "")
    with pytest.raises(DataError, match="is empty"):
        read_log(path)


def test_header_only_file_is_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\n")
    with pytest.raises(DataError, match="no events in the file"):
        read_log(path, ReaderConfig(format="csv"))


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_log(tmp_path / "absent.csv")


def test_folder_in_place_of_file_is_rejected(tmp_path):
    with pytest.raises(DataError, match="is a folder: pass the log file inside it"):
        read_log(tmp_path)


def test_unknown_column_lists_header(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1\n")
    with pytest.raises(DataError, match=r"column 'product' for the item not found"):
        read_log(path, ReaderConfig(format="csv", item_col="product"))


def test_column_name_without_header_is_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "u,i,1\n")
    with pytest.raises(DataError, match="needs a header"):
        read_log(path, ReaderConfig(format="csv", header=False, item_col="item"))


def test_auto_format_rejects_ambiguous_file(tmp_path):
    path = write(tmp_path / "events.txt", "a b c\n")
    with pytest.raises(DataError, match="pass --format with one of"):
        read_log(path)


def test_named_format_rejects_other_time_unit(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    with pytest.raises(DataError, match="stores timestamps in s"):
        read_log(path, ReaderConfig(format="taobao", time_unit="ms"))


OTTO_IN_SECONDS = (
    '{"session": 0, "events": [{"aid": 5, "ts": 1659304800, "type": "clicks"}, '
    '{"aid": 6, "ts": 1659304860, "type": "carts"}]}\n'
)


def test_otto_in_seconds_rejected_by_default(tmp_path):
    path = write(tmp_path / "train.jsonl", OTTO_IN_SECONDS)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="otto"))
    message = str(error.value)
    assert "the latest timestamp, 1659304860, is before 1973" in message
    assert "pass --time-unit s" in message


def test_otto_in_seconds_read_with_unit(tmp_path):
    path = write(tmp_path / "train.jsonl", OTTO_IN_SECONDS)
    raw = read_log(path, ReaderConfig(format="otto", time_unit="s"))
    assert list(raw.timestamps) == [1659304800, 1659304860]


def test_otto_in_milliseconds_read_as_seconds_rejected(shared_data):
    path = shared_data / "otto-sample" / "train.jsonl"
    with pytest.raises(DataError, match=r"after the year 9999 in seconds.*pass --time-unit ms"):
        read_log(path, ReaderConfig(format="otto", time_unit="s"))


def test_movielens_dat_double_colon(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::3::978300761\n")
    raw = read_log(path)
    assert list(raw.items) == ["10", "20"]
    assert list(raw.timestamps) == [978300760, 978300761]


def test_movielens_csv_without_index_column(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    raw = read_log(path)
    assert list(raw.users) == ["1"]
    assert list(raw.items) == ["31"]


def test_float_id_is_rejected(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"user": 1, "item": 4.5, "timestamp": 1}\n')
    with pytest.raises(DataError, match=r"log.jsonl:1: item id 4.5 is invalid"):
        read_log(path, ReaderConfig(format="jsonl"))


def test_event_types_without_type_column_is_rejected(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1\n")
    with pytest.raises(DataError, match="pass --event-type-col"):
        read_log(path, ReaderConfig(format="csv", event_types=("pv",)))


def test_generic_csv_event_type_column(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp,kind\nu,i,1,view\nu,j,2,buy\n")
    raw = read_log(path, ReaderConfig(format="csv", event_type_col="kind", event_types=("buy",)))
    assert list(raw.items) == ["j"]
    assert list(raw.positions) == [0]


@pytest.mark.parametrize(
    ("name", "log_format", "content", "line", "byte"),
    [
        ("latin1.csv", "csv", b"user,item,timestamp\nu,i,1\nJos\xe9,j,2\n", 3, "0xe9"),
        ("latin1.csv", "auto", b"user,item,timestamp\nJos\xe9,j,2\n", 2, "0xe9"),
        ("u.data", "movielens", b"1\t2\t5\t10\n1\t\xff\t5\t11\n", 2, "0xff"),
        ("garbage.jsonl", "jsonl", b'{"user": "a\xff", "item": "x", "timestamp": 1}\n', 1, "0xff"),
        ("garbage.jsonl", "auto", b'{"user": "a\xc3", "item": "x", "timestamp": 1}\n', 1, "0xc3"),
    ],
)
def test_invalid_utf8_names_line_and_byte(tmp_path, name, log_format, content, line, byte):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format=log_format))
    message = str(error.value)
    assert f"{path}:{line}:" in message
    assert byte in message
    assert "UTF-8" in message


def test_utf8_bom_header_detected_and_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item,timestamp\nu,i,1\nu,j,2\n")
    assert detect_format(path) == "csv"
    raw = read_log(path, ReaderConfig(format="csv", user_col="user"))
    assert list(raw.users) == ["u", "u"]
    assert list(raw.items) == ["i", "j"]


def test_utf8_bom_jsonl_first_line_parsed(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"user": "u", "item": "i", "timestamp": 1}\n')
    assert detect_format(path) == "jsonl"
    assert list(read_log(path).items) == ["i"]


GENERIC_ROWS = "user_id,ts,product\nu0,1600000000,p1\nu0,1600000060,p2\nu1,1600000000,p1\n"


def test_auto_format_csv_with_column_flags(tmp_path):
    path = write(tmp_path / "log.csv", GENERIC_ROWS)
    config = ReaderConfig(user_col="user_id", item_col="product", time_col="ts")
    assert detect_format(path, config) == "csv"
    raw = read_log(path, config)
    assert list(raw.items) == ["p1", "p2", "p1"]


def test_auto_format_headerless_tsv_with_positions(tmp_path):
    path = write(tmp_path / "log.tsv", "p1\tu0\tc\t1600000000\np2\tu0\tc\t1600000060\n")
    config = ReaderConfig(header=False, user_col="1", item_col="0", time_col="3")
    raw = read_log(path, config)
    assert list(raw.users) == ["u0", "u0"]
    assert list(raw.timestamps) == [1600000000, 1600000060]


def test_auto_format_known_column_name_csv(tmp_path):
    path = write(tmp_path / "log.csv", GENERIC_ROWS)
    assert detect_format(path) == "csv"
    with pytest.raises(DataError, match=r"no item column among .*: pass --item-col"):
        read_log(path)


def test_auto_format_jsonl_with_column_flags(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"who": "u", "what": "i", "when": 5}\n')
    raw = read_log(path, ReaderConfig(user_col="who", item_col="what", time_col="when"))
    assert list(raw.users) == ["u"]
    assert list(raw.timestamps) == [5]


def test_auto_format_unknown_header_stays_ambiguous(tmp_path):
    # A Taobao log under another name: no known column name, so the reader cannot tell.
    path = write(tmp_path / "events.csv", "1,2268318,2520377,pv,1511544070\n")
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "cannot tell the format of" in message
    assert "pass --format with one of" in message
    assert "first line ['1', '2268318', '2520377', 'pv', '1511544070']" in message
    assert "Pass --user-col, --item-col and --time-col" in message
    assert "--no-header if the first line is an event" in message


@pytest.mark.parametrize(
    ("magic", "name", "command"),
    [
        (b"\x1f\x8b\x08\x00", "gzip", "gunzip -k"),
        (b"BZh91AY&SY", "bzip2", "bunzip2 -k"),
        (b"\xfd7zXZ\x00\x00", "xz", "unxz -k"),
        (b"\x28\xb5\x2f\xfd\x00", "Zstandard", "unzstd"),
        (b"PK\x03\x04\x14\x00", "ZIP", "unzip"),
    ],
)
@pytest.mark.parametrize(
    "log_format", ["auto", "csv", "jsonl", "movielens", "otto", "taobao", "trivago"]
)
def test_compressed_file_is_named(tmp_path, magic, name, command, log_format):
    path = tmp_path / "ratings.csv.gz"
    path.write_bytes(magic + b"\x00" * 32)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format=log_format, user_col="0"))
    message = str(error.value)
    assert f"log file {path} is {name}-compressed, and compressed files are not read" in message
    assert f"`{command} {path}`" in message


def test_text_starting_like_bzip2_is_read(tmp_path):
    path = write(tmp_path / "log.csv", "BZh,item,timestamp\nu,i,5\n")
    raw = read_log(path, ReaderConfig(format="csv", user_col="BZh"))
    assert list(raw.users) == ["u"]


def test_event_types_matching_nothing_lists_types(shared_data):
    path = shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="taobao", item_col="category", event_types=("click",)))
    message = str(error.value)
    assert "--event-types click matches no event" in message
    for event_type in ("pv", "cart", "fav", "buy"):
        assert event_type in message.split("the event types in the file are ")[1]
    assert "pass some of them to --event-types" in message


def test_event_types_list_is_capped(tmp_path):
    rows = "".join(f"u,i,{second},type{second}\n" for second in range(30))
    path = write(tmp_path / "log.csv", "user,item,timestamp,kind\n" + rows)
    config = ReaderConfig(format="csv", event_type_col="kind", event_types=("click",))
    with pytest.raises(DataError) as error:
        read_log(path, config)
    message = str(error.value)
    assert "type19 and more" in message
    assert "type20" not in message


def test_wrong_delimiter_row_suggests_delimiter(tmp_path):
    path = write(tmp_path / "log.csv", "u0,1600000000,p1\n")
    config = ReaderConfig(
        format="csv", header=False, delimiter=";", user_col="0", item_col="2", time_col="1"
    )
    with pytest.raises(DataError) as error:
        read_log(path, config)
    message = str(error.value)
    assert "log.csv:1: row has 1 field but 3 are needed (up to column 2, counted from 0)" in message
    assert "pass --delimiter ','" in message


def test_wrong_delimiter_header_suggests_delimiter(tmp_path):
    path = write(tmp_path / "log.tsv", GENERIC_ROWS)
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv", user_col="user_id"))
    message = str(error.value)
    assert "column 'user_id' for the user not found in the header" in message
    assert "the header contains ',', so the delimiter is probably wrong" in message


def test_short_row_names_delimiter_and_column_flags(tmp_path):
    path = write(tmp_path / "short.csv", "user_id,ts,product\nu0,1,p1\nu0,1600009999\n")
    config = ReaderConfig(user_col="user_id", item_col="product", time_col="ts")
    with pytest.raises(DataError) as error:
        read_log(path, config)
    message = str(error.value)
    assert (
        "short.csv:3: row has 2 fields but 3 are needed (up to column 2, counted from 0): "
        "'u0,1600009999'"
    ) in message
    assert "check that --delimiter (now ',') separates the fields" in message
    assert "--user-col, --item-col and --time-col" in message


def test_short_movielens_row_does_not_suggest_delimiter(tmp_path):
    path = write(tmp_path / "u.data", "1\t10\t4\t5\n1,10\n")
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "u.data:2: row has 1 field" in message
    assert "--delimiter" not in message
    assert "this row does not have the movielens layout, so fix or remove it" in message


def test_fractional_timestamp_says_what_to_do(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,1600000000.5\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "timestamp '1600000000.5' is not an integer" in message
    assert "timestamps must be whole Unix seconds" in message
    assert "pass --time-unit ms" in message


def test_fractional_json_timestamp_says_what_to_do(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"user": "u", "item": "i", "time": 1600000000.5}\n')
    with pytest.raises(DataError, match="timestamps must be whole Unix seconds"):
        read_log(path)


def test_date_timestamp_names_time_col(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,2020-01-01\n")
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))
    message = str(error.value)
    assert "timestamps must be Unix times in whole seconds" in message
    assert "check that --time-col names the timestamp column" in message


def test_jsonl_missing_time_key_names_time_col(tmp_path):
    lines = '{"user": "u", "item": "i", "time": 1}\n{"user": "u", "item": "j"}\n'
    path = write(tmp_path / "log.jsonl", lines)
    with pytest.raises(DataError) as error:
        read_log(path)
    message = str(error.value)
    assert "log.jsonl:2: key 'time' missing in" in message
    assert "pass --time-col with the key that this log uses" in message


def test_jsonl_missing_event_type_key_names_flag(tmp_path):
    path = write(tmp_path / "log.jsonl", '{"user": "u", "item": "i", "time": 1}\n')
    with pytest.raises(DataError, match="pass --event-type-col with the key"):
        read_log(path, ReaderConfig(event_type_col="kind"))


def test_taobao_milliseconds_advice_keeps_item_col(tmp_path, shared_data):
    head = (shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv").read_text()
    rows = [row.rsplit(",", 1) for row in head.splitlines()[:3]]
    path = write(tmp_path / "UserBehavior.csv", "".join(f"{a},{t}000\n" for a, t in rows))
    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(item_col="category", event_types=("pv",)))
    message = str(error.value)
    expected = (
        "--format csv --no-header --delimiter ',' --user-col 0 --item-col 2 --time-col 4 "
        "--event-type-col 3 --time-unit ms"
    )
    assert expected in message
    config = ReaderConfig(
        format="csv",
        header=False,
        delimiter=",",
        user_col="0",
        item_col="2",
        time_col="4",
        event_type_col="3",
        time_unit="ms",
        event_types=("pv",),
    )
    raw = read_log(path, config)
    assert list(raw.items) == [row[0].split(",")[2] for row in rows]
    assert list(raw.timestamps) == [int(row[1]) for row in rows]


def negative_time_warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelname == "WARNING" and "before 1970" in record.getMessage()
    ]


def test_negative_csv_timestamps_warn_once(tmp_path, caplog):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,5\nu,j,-20\nv,k,-3\n")
    raw = read_log(path, ReaderConfig(format="csv"))
    assert list(raw.timestamps) == [5, -20, -3]
    warnings = negative_time_warnings(caplog)
    assert len(warnings) == 1
    assert f"{path}:3: 2 timestamps before 1970" in warnings[0]
    assert "the first is -20" in warnings[0]
    assert "--time-col" in warnings[0]
    assert "--time-unit (now s)" in warnings[0]
    assert "add that start's Unix time in seconds to every timestamp" in warnings[0]


def test_negative_milliseconds_name_file_value(tmp_path, caplog):
    lines = [
        {"user": "u", "item": "i", "ts": 1_600_000_000_000},
        {"user": "u", "item": "j", "ts": -1_500},
    ]
    path = write(tmp_path / "log.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    raw = read_log(path, ReaderConfig(format="jsonl", time_unit="ms"))
    assert list(raw.timestamps) == [1_600_000_000, -2]
    warnings = negative_time_warnings(caplog)
    assert len(warnings) == 1
    assert f"{path}:2: 1 timestamp before 1970" in warnings[0]
    assert "the first is -1500" in warnings[0]
    assert "--time-unit (now ms)" in warnings[0]
    assert "add that start's Unix time in milliseconds to every timestamp" in warnings[0]


@pytest.mark.parametrize(
    ("name", "text", "log_format", "line", "fix"),
    [
        ("u.data", "1\t10\t4\t-5\n", "movielens", 1, "the movielens layout"),
        (
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,4.0,-5\n",
            "movielens",
            2,
            "the movielens layout",
        ),
        ("UserBehavior.csv", "1,10,7,pv,-5\n", "taobao", 1, "the taobao layout"),
    ],
)
def test_negative_timestamps_warn_for_each_format(
    tmp_path, caplog, name, text, log_format, line, fix
):
    path = write(tmp_path / name, text)
    raw = read_log(path, ReaderConfig(format=log_format))
    assert list(raw.timestamps) == [-5]
    warnings = negative_time_warnings(caplog)
    assert len(warnings) == 1
    assert f"{path}:{line}: 1 timestamp before 1970" in warnings[0]
    assert fix in warnings[0]


def test_otto_negative_timestamp_warns(tmp_path, caplog):
    events = [{"aid": 10, "ts": 1_600_000_000_000, "type": "clicks"}]
    events.append({"aid": 11, "ts": -5000, "type": "clicks"})
    path = write(tmp_path / "train.jsonl", json.dumps({"session": 1, "events": events}) + "\n")
    raw = read_log(path, ReaderConfig(format="otto"))
    assert list(raw.timestamps) == [1_600_000_000, -5]
    warnings = negative_time_warnings(caplog)
    assert len(warnings) == 1
    assert f"{path}:1: 1 timestamp before 1970" in warnings[0]
    assert "the first is -5000" in warnings[0]
    assert "--time-unit (now ms)" in warnings[0]


def test_negative_time_col_named_in_fix(tmp_path, caplog):
    path = write(tmp_path / "UserBehavior.csv", "1,10,-7,pv,5\n")
    read_log(path, ReaderConfig(format="taobao", time_col="2"))
    warnings = negative_time_warnings(caplog)
    assert len(warnings) == 1
    assert "--time-col 2 names the timestamp column of the taobao layout" in warnings[0]


def test_trivago_negative_timestamp_warns(tmp_path, caplog):
    header = "user_id,session_id,timestamp,step,action_type,reference,platform,city,device,"
    header += "current_filters,impressions,prices\n"
    row = "u1,s1,-60,1,clickout item,42,US,City,mobile,,42|43,10|20\n"
    path = write(tmp_path / "train.csv", header + row)
    raw = read_log(path, ReaderConfig(format="trivago"))
    assert list(raw.timestamps) == [-60]
    assert len(negative_time_warnings(caplog)) == 1


def test_timestamps_from_1970_do_not_warn(tmp_path, caplog):
    path = write(tmp_path / "log.csv", "user,item,timestamp\nu,i,0\nu,j,1600000000\n")
    read_log(path, ReaderConfig(format="csv"))
    assert negative_time_warnings(caplog) == []


def test_dropped_event_types_do_not_warn(tmp_path, caplog):
    path = write(tmp_path / "UserBehavior.csv", "1,10,7,cart,-5\n1,11,7,pv,5\n")
    raw = read_log(path, ReaderConfig(format="taobao", event_types=("pv",)))
    assert list(raw.timestamps) == [5]
    assert negative_time_warnings(caplog) == []
