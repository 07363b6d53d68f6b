"""bench/read_speed.py: flag checks, the synthetic copies, and a tiny run of both measures."""

from __future__ import annotations

import re

import pytest

from tests.bench.conftest import load_script

read_speed = load_script("read_speed")

HEAD_ROWS = ["1,10,100,pv,1511544070", "25,11,100,buy,1511544071", "3,10,101,pv,1511544072"]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A HIERTCN_DATA_DIR whose Taobao head log has three rows."""
    head = tmp_path / "data" / read_speed.DEFAULT_DATA
    head.parent.mkdir(parents=True)
    head.write_text("\n".join(HEAD_ROWS) + "\n")
    monkeypatch.setenv("HIERTCN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--copies", "0"], "argument --copies: '0' is invalid: use an integer >= 1"),
        (["--repeat", "0"], "argument --repeat: '0' is invalid: use an integer >= 1"),
        (["--format", "parquet"], "argument --format: invalid choice: 'parquet'"),
        (["--data", "{tmp}/absent.csv"], "--data {tmp}/absent.csv is not a file"),
    ],
)
def test_bad_flag_exits_2(tmp_path, capsys, data_dir, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]

    with pytest.raises(SystemExit) as exit_info:
        read_speed.parse_args(flags)

    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_missing_head_log_names_data_dir_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HIERTCN_DATA_DIR", str(tmp_path / "nodata"))

    with pytest.raises(SystemExit) as exit_info:
        read_speed.parse_args([])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"HIERTCN_DATA_DIR is '{tmp_path / 'nodata'}'" in error
    assert "or pass --data LOG" in error


def test_copies_get_new_user_ids(tmp_path, data_dir):
    out = tmp_path / "copies.csv"

    read_speed.write_copies(data_dir / read_speed.DEFAULT_DATA, 3, out)

    lines = out.read_text().splitlines()
    assert len(lines) == 9
    assert lines[:3] == HEAD_ROWS
    # The largest user id, 25, has two digits, so each copy adds 100 to the user ids.
    assert lines[3:6] == [
        "101,10,100,pv,1511544070",
        "125,11,100,buy,1511544071",
        "103,10,101,pv,1511544072",
    ]
    assert lines[8] == "203,10,101,pv,1511544072"


def test_tiny_run_prints_both_measures(capsys, data_dir):
    assert read_speed.main(["--copies", "2", "--repeat", "2"]) == 0

    out = capsys.readouterr().out
    assert "data: taobao_copies.csv" in out
    assert "fastest of 2 runs" in out
    pattern = r"^\| (floor: csv.reader|read_log) \| ([\d,]+) \| [\d.]+ \| [\d,]+ \|"
    rows = re.findall(pattern, out, re.M)
    assert rows == [("floor: csv.reader", "6"), ("read_log", "6")]
    assert re.search(r"^\| floor: csv.reader \|.*\| 1\.00 \|$", out, re.M)


def test_json_lines_floor_counts_lines(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    events = ", ".join(f'{{"aid": {aid}, "ts": 1659304800000, "type": "clicks"}}' for aid in (1, 2))
    path.write_text(f'{{"session": 1, "events": [{events}]}}\n\n')

    assert read_speed.main(["--data", str(path), "--format", "otto"]) == 0

    out = capsys.readouterr().out
    assert re.search(r"^\| floor: json.loads \| 1 \|", out, re.M)
    assert re.search(r"^\| read_log \| 2 \|", out, re.M)


def test_failed_read_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("1,10,100,pv,soon\n")

    assert read_speed.main(["--data", str(path)]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith("read_speed.py: error: read_log failed: ")
    assert "timestamp 'soon' is not an integer" in error
    assert len(error.splitlines()) == 1
