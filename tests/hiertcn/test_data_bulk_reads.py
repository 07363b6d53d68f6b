"""Bulk reads of delimited logs: chunks, integer codes, and agreement with the per-row checks.

The per-row path (`RawLogBuilder.add`) is the reference: a chunk goes there whenever the bulk
checks find anything unusual, so both must give the same events, warnings and errors.
"""

from __future__ import annotations

import csv
import gc
import io
import logging
from pathlib import Path

import numpy as np
import pytest

import hiertcn.data.delimited_rows as delimited_rows
import hiertcn.data.format_detection as format_detection
import hiertcn.data.readers as readers
from hiertcn.data.duplicates import find_duplicates
from hiertcn.data.interning import CodeColumn, Interner
from hiertcn.data.raw_log import RawLogBuilder
from hiertcn.data.readers import ReaderConfig, read_log
from hiertcn.data.sessions import sort_events
from hiertcn.errors import DataError

# Quoted fields, a quoted line break, padded ids, a blank line, a row of blank fields, negative
# and repeated times, event types and impression lists, with CR LF line ends.
MIXED_ROWS = [
    "user,item,ts,type,shown",
    'u1,i1,100,pv,"i2|i3"',
    '" u2 ",i2,100,buy,',
    'u1,"i,3",-5,pv,i1',
    "",
    "  ,  ,  ,  ,  ",
    'u3,"multi',
    'line",160,cart,i1| i2',
    "u1,i1,100,pv,i2",
    "u2,i2 ,100,buy,",
    "u4,i1,99,PV,i4",
]
MIXED_TEXT = "\r\n".join(MIXED_ROWS) + "\r\n"

CONFIGS = {
    "plain": ReaderConfig(format="csv"),
    "types": ReaderConfig(format="csv", event_type_col="type", event_types=("pv", "buy", "x")),
    "impressions": ReaderConfig(format="csv", event_type_col="type", impressions_col="shown"),
    "milliseconds": ReaderConfig(format="csv", time_unit="ms"),
}


def read_summary(path: Path, config: ReaderConfig, caplog) -> dict[str, object]:
    """Read `path` and return its events and log lines, or its error, as plain values."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hiertcn.data"):
        try:
            raw = read_log(path, config)
        except DataError as error:
            return {"error": str(error)}
    summary: dict[str, object] = {
        "users": raw.users.tolist(),
        "items": raw.items.tolist(),
        "timestamps": raw.timestamps.tolist(),
        "positions": raw.positions.tolist(),
        "event_types": None if raw.event_types is None else raw.event_types.tolist(),
        "impressions": None if raw.impressions is None else raw.impressions.tolist(),
        "log": [record.getMessage() for record in caplog.records],
    }
    if raw.impression_offsets is not None:
        summary["impression_offsets"] = raw.impression_offsets.tolist()
    return summary


def per_row_only(monkeypatch) -> None:
    """Send every chunk to the per-row checks of `RawLogBuilder.add`."""
    monkeypatch.setattr(RawLogBuilder, "add_columns", lambda *args: False)


@pytest.mark.parametrize("name", CONFIGS)
def test_bulk_read_matches_per_row_read(tmp_path, caplog, monkeypatch, name):
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED_TEXT.encode())
    config = CONFIGS[name]
    bulk = read_summary(path, config, caplog)

    monkeypatch.setattr(delimited_rows, "_CHUNK_ROWS", 2)
    small_chunks = read_summary(path, config, caplog)
    per_row_only(monkeypatch)
    per_row = read_summary(path, config, caplog)

    # Times of at most 160 read in milliseconds are all before 1973, which the reader rejects.
    assert ("error" in bulk) == (name == "milliseconds")
    assert bulk == per_row
    assert small_chunks == per_row


def test_mixed_file_reads_expected_events(tmp_path, caplog):
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED_TEXT.encode())

    summary = read_summary(path, CONFIGS["impressions"], caplog)

    assert summary["users"] == ["u1", "u2", "u1", "u3", "u1", "u2", "u4"]
    assert summary["items"] == ["i1", "i2", "i,3", "multi\r\nline", "i1", "i2", "i1"]
    assert summary["timestamps"] == [100, 100, -5, 160, 100, 100, 99]
    assert summary["event_types"] == ["pv", "buy", "pv", "cart", "pv", "buy", "PV"]
    assert summary["impression_offsets"] == [0, 2, 2, 3, 5, 6, 6, 7]
    assert summary["impressions"] == ["i2", "i3", "i1", "i1", "i2", "i2", "i4"]
    warning = [line for line in summary["log"] if "before 1970" in line]
    assert warning and warning[0].startswith(f"{path}:4: 1 timestamp before 1970")
    duplicates = [line for line in summary["log"] if "of an earlier event: 2" in line]
    assert duplicates and "user u1, item i1 at 100 s" in duplicates[0]


def taobao_rows(count: int) -> list[str]:
    return [f"{row % 97},{row % 13},{row % 5},pv,{1_600_000_000 + row}" for row in range(count)]


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ("7,8,9,pv,12x3", "timestamp '12x3' is not an integer"),
        (" ,8,9,pv,1600000000", "the user id is empty"),
        ("7, ,9,pv,1600000000", "the item id is empty"),
        ("7,8,9", "row has 3 fields but 5 are needed"),
        ("7,8,9,pv,1600000000000", "is after the year 9999 in seconds"),
    ],
)
def test_deep_bad_row_names_its_line(tmp_path, bad_row, expected):
    rows = taobao_rows(40_000)
    rows[37_000] = bad_row
    path = tmp_path / "big.csv"
    path.write_text("\n".join(rows) + "\n")

    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="taobao"))

    assert str(error.value).startswith(f"{path}:37001: ")
    assert expected in str(error.value)


def test_earlier_error_beats_malformed_row(tmp_path, monkeypatch):
    rows = taobao_rows(100)
    rows[40] = "7,8,9,pv,soon"
    rows[60] = "7,8," + "9" * 50 + ",pv,1600000000"
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    # Without strict mode, a field above the size limit is the one row that the csv module
    # rejects. The readers raise that limit, so the test keeps it low.
    monkeypatch.setattr(readers, "raise_csv_field_size_limit", lambda: None)
    monkeypatch.setattr(format_detection, "raise_csv_field_size_limit", lambda: None)
    limit = csv.field_size_limit(20)
    try:
        with pytest.raises(DataError) as earlier:
            read_log(path, ReaderConfig(format="taobao"))
        rows[40] = "7,8,9,pv,1600000000"
        path.write_text("\n".join(rows) + "\n")
        with pytest.raises(DataError) as malformed:
            read_log(path, ReaderConfig(format="taobao"))
    finally:
        csv.field_size_limit(limit)

    assert str(earlier.value).startswith(f"{path}:41: timestamp 'soon' is not an integer")
    assert str(malformed.value).startswith(f"{path}:61: malformed CSV row (field larger")


def test_earlier_error_beats_invalid_utf8(tmp_path):
    rows = [row.encode() for row in taobao_rows(5_000)]
    rows[10] = b"7,8,9,pv,soon"
    rows[4_000] = b"7,8,\xe9,pv,1600000000"
    path = tmp_path / "log.csv"
    path.write_bytes(b"\n".join(rows) + b"\n")

    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="taobao"))

    assert str(error.value).startswith(f"{path}:11: timestamp 'soon' is not an integer")


def test_quoted_line_breaks_keep_line_numbers(tmp_path, monkeypatch):
    rows = ["user,item,ts"]
    for row in range(30):
        item = f'"item\n{row}"' if row % 4 == 0 else f"i{row}"
        rows.append(f"u{row},{item},{1_600_000_000 + row}")
    rows.append("u99,i99,later")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(delimited_rows, "_CHUNK_ROWS", 3)
    # The header, 30 rows and one extra line for each of the 8 quoted line breaks.
    bad_line = 1 + 30 + 8 + 1

    with pytest.raises(DataError) as error:
        read_log(path, ReaderConfig(format="csv"))

    assert str(error.value).startswith(f"{path}:{bad_line}: timestamp 'later'")


@pytest.mark.parametrize(
    "text",
    [
        'a,b\n"c\nd",e\r\nf,"g\rh"\rz\n\n"open\r\n',
        '"x""y",1\r\n"\r\n",2\n,\n"last',
        "plain,row\nno,quotes\n",
    ],
)
def test_line_numbers_match_csv_line_num(text):
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, expected = [], []
    for fields in reader:
        rows.append(fields)
        expected.append(reader.line_num)

    assert list(delimited_rows._line_numbers(0, rows, reader.line_num)) == expected
    assert list(delimited_rows._line_numbers(0, rows[:-1], None)) == expected[:-1]


def test_raw_log_codes_decode_to_ids(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\nb,x,1\na,y,2\nb,y,3\nc,x,4\n")

    raw = read_log(path, ReaderConfig(format="csv"))
    kept = raw.select(np.array([False, True, True, False]))

    assert raw.distinct_users.tolist() == ["b", "a", "c"]
    assert raw.user_codes.tolist() == [0, 1, 0, 2]
    assert raw.users.tolist() == ["b", "a", "b", "c"]
    assert raw.items.tolist() == ["x", "y", "y", "x"]
    assert kept.distinct_users is raw.distinct_users
    assert kept.users.tolist() == ["a", "b"]
    assert kept.timestamps.tolist() == [2, 3]


def test_interner_codes_follow_first_appearance():
    column = CodeColumn()
    column.extend(["b", "a", "b"])
    column.append("c")
    column.extend(["a"])

    assert column.codes().tolist() == [0, 1, 0, 2, 1]
    assert column.codes().dtype == np.intc
    assert column.distinct().tolist() == ["b", "a", "c"]
    assert Interner({"x": 0})["y"] == 1


def test_sort_events_matches_lexsort():
    generator = np.random.default_rng(0)
    users = generator.integers(0, 50, 5_000).astype(np.int32)
    timestamps = generator.integers(-1_000, 1_000, 5_000)
    in_file_order = np.arange(5_000, dtype=np.int64)
    shuffled = generator.permutation(5_000).astype(np.int64)
    repeated = np.sort(generator.integers(0, 100, 5_000))
    # A time span so wide that user and time do not fit in one int64 key.
    wide = timestamps * (2**56)

    cases = [
        (timestamps, in_file_order),
        (timestamps, shuffled),
        (timestamps, repeated),
        (wide, shuffled),
    ]
    for times, positions in cases:
        expected = np.lexsort((positions, times, users))
        assert sort_events(users, times, positions).tolist() == expected.tolist()
    assert sort_events(users[:0], timestamps[:0], shuffled[:0]).tolist() == []


@pytest.mark.parametrize("scale", [1, 2**50], ids=["one_key", "lexsort"])
def test_find_duplicates_counts_repeats(scale):
    users, items = CodeColumn(), CodeColumn()
    users.extend(["u", "v", "u", "v", "u", "u"])
    items.extend(["a", "a", "b", "a", "a", "a"])
    times = np.array([5, 5, 5, 5, 5, 7], dtype=np.int64) * scale

    duplicates = find_duplicates(users, items, times)

    assert duplicates is not None
    assert (duplicates.count, duplicates.user, duplicates.item) == (2, "u", "a")
    assert duplicates.time == 5 * scale


def test_find_duplicates_none_without_repeats():
    users, items = CodeColumn(), CodeColumn()
    users.extend(["u", "u"])
    items.extend(["a", "a"])

    assert find_duplicates(users, items, np.array([1, 2], dtype=np.int64)) is None


@pytest.mark.parametrize("enabled", [True, False])
def test_read_log_restores_garbage_collector(tmp_path, enabled):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\nu,i,1\n")
    was_enabled = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        read_log(path, ReaderConfig(format="csv"))
        assert gc.isenabled() == enabled
        with pytest.raises(DataError):
            read_log(tmp_path / "missing.csv", ReaderConfig(format="csv"))
        assert gc.isenabled() == enabled
    finally:
        if was_enabled:
            gc.enable()


def test_short_row_hint_names_chosen_format(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2,3,pv,1600000000\n1;2;3;pv;1600000001\n")

    with pytest.raises(DataError) as chosen:
        read_log(path, ReaderConfig(format="taobao"))
    with pytest.raises(DataError) as detected:
        read_log(path, ReaderConfig(format="auto"))

    hint = "pass --delimiter ';'"
    assert f"{hint}, or pass another --format if the file is not a taobao log" in str(chosen.value)
    assert str(detected.value).endswith(hint)


def test_short_csv_row_hint_names_chosen_format(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\nu,i,1\nu,i\n")

    with pytest.raises(DataError) as chosen:
        read_log(path, ReaderConfig(format="csv"))
    with pytest.raises(DataError) as detected:
        read_log(path, ReaderConfig(format="auto"))

    assert "name existing columns, or pass another --format if the file is not a csv log" in str(
        chosen.value
    )
    assert str(detected.value).endswith("name existing columns")
