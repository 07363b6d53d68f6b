"""bench/stream.py: flag checks and the reuse of the bundle in --work-dir. No broker starts."""

from __future__ import annotations

import argparse

import pytest

from tests.bench.conftest import load_script

stream_bench = load_script("stream")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--batch-sizes", "16,64"], [16, 64]),
        (["--batch-sizes", "16", "64"], [16, 64]),
        (["--batch-sizes", "16, 64"], [16, 64]),
        ([], [16, 64, 256]),
    ],
)
def test_batch_sizes_take_commas_and_spaces(flags, expected):
    assert stream_bench.parse_args(flags).batch_sizes == expected


def test_pending_batches_accept_zero():
    assert stream_bench.parse_args(["--max-pending-batches", "0,4"]).max_pending_batches == [0, 4]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-sizes", "abc"], "argument --batch-sizes: 'abc' is invalid"),
        (["--batch-sizes", "0"], "argument --batch-sizes: '0' is invalid: use integers >= 1"),
        (["--max-pending-batches", "-1"], "use integers >= 0, separated by commas or spaces"),
        (["--events", "0"], "argument --events: '0' is invalid: use an integer >= 1"),
        (["--items", "0"], "argument --items: '0' is invalid: use an integer >= 1"),
        (["--seconds", "0"], "argument --seconds: '0' is invalid: use a number of seconds > 0"),
        (["--warmup-seconds", "-1"], "'-1' is invalid: use a number of seconds >= 0"),
        (["--bundle", "{tmp}/absent"], "--bundle {tmp}/absent is not a folder"),
    ],
)
def test_bad_flag_exits_2_before_broker(tmp_path, capsys, flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]

    with pytest.raises(SystemExit) as exit_info:
        stream_bench.main(flags)

    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_help_suggests_no_out_flag(capsys):
    with pytest.raises(SystemExit):
        stream_bench.parse_args(["--help"])
    text = capsys.readouterr().out

    assert "--out" not in text
    assert "reuse the one an earlier run exported there" in " ".join(text.split())


def test_second_run_reuses_bundle_in_work_dir(tmp_path, capsys):
    bundle = stream_bench.random_bundle(tmp_path, items=20)
    written = {path: path.stat().st_mtime_ns for path in bundle.iterdir()}

    again = stream_bench.random_bundle(tmp_path, items=20)

    assert again == bundle
    assert {path: path.stat().st_mtime_ns for path in bundle.iterdir()} == written
    assert f"reusing the bundle in {bundle}" in capsys.readouterr().err
    args = argparse.Namespace(bundle=None, items=20)
    assert len(stream_bench.bundle_items(bundle, args)) == 20

    with pytest.raises(SystemExit) as exit_info:
        stream_bench.bundle_items(bundle, argparse.Namespace(bundle=None, items=30))

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{bundle} from an earlier run has 20 items, not --items 30" in error
    assert f"remove {bundle} or pass --items 20" in error


def test_folder_without_bundle_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stream_bench.bundle_items(tmp_path, argparse.Namespace(bundle=tmp_path, items=20))

    assert exit_info.value.code == 2
    assert f"stream.py: error: bundle {tmp_path} cannot be loaded: " in capsys.readouterr().err
