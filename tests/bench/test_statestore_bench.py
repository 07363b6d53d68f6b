"""bench/statestore.py: flag checks, the percentile, and a small run on a temporary store."""

from __future__ import annotations

import re

import pytest

from tests.bench.conftest import load_script

statestore_bench = load_script("statestore")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batches", "0"], "argument --batches: '0' is invalid: use an integer >= 1"),
        (["--batch-size", "0"], "argument --batch-size: '0' is invalid: use an integer >= 1"),
        (["--threads", "0"], "argument --threads: '0' is invalid: use an integer >= 1"),
        (["--seed", "-1"], "argument --seed: -1 is invalid: use an integer from 0 to "),
        (["--seed", "1.5"], "argument --seed: '1.5' is invalid: use an integer"),
        (["--population", "10"], "--population 10 is below --batch-size 512"),
        (["--dir", "{tmp}/absent"], "--dir {tmp}/absent is not an existing folder"),
        (["--bundle", "{tmp}/absent"], "--bundle {tmp}/absent is not a folder"),
    ],
)
def test_bad_flag_exits_2(tmp_path, capsys, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]

    with pytest.raises(SystemExit) as exit_info:
        statestore_bench.parse_args(flags)

    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_folder_without_bundle_exits_2(tmp_path, capsys):
    flags = ["--bundle", str(tmp_path), "--batches", "1", "--population", "10"]

    with pytest.raises(SystemExit) as exit_info:
        statestore_bench.main([*flags, "--batch-size", "10", "--dir", str(tmp_path)])

    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"statestore.py: error: --bundle {tmp_path}: " in error
    assert "manifest.json not found" in error
    assert "Traceback" not in error


def test_p90_of_two_samples_not_below_median():
    median, p90 = statestore_bench.median_and_p90([1.0, 2.0])

    assert median == pytest.approx(1.5)
    assert p90 == pytest.approx(1.9)


def test_p90_of_eleven_samples_is_second_slowest():
    median, p90 = statestore_bench.median_and_p90([float(value) for value in range(11)])

    assert median == pytest.approx(5.0)
    assert p90 == pytest.approx(9.0)


def test_table_names_batch_count(tmp_path, capsys):
    flags = ["--batches", "3", "--population", "40", "--batch-size", "8", "--dir", str(tmp_path)]

    assert statestore_bench.main(flags) == 0

    out = capsys.readouterr().out
    assert "read µs/user, median (p90) of 3 batches" in out
    assert "commit µs/user, median (p90) of 3 batches" in out
    rows = re.findall(
        r"^\| (synced|not synced) \| ([\d.]+) \(([\d.]+)\) \| ([\d.]+) \(([\d.]+)\)", out, re.M
    )
    assert len(rows) == 2
    for _mode, read, read_p90, commit, commit_p90 in rows:
        assert float(read_p90) >= float(read)
        assert float(commit_p90) >= float(commit)
