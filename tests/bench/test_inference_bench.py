"""bench/inference.py: flag checks and the list syntax of --batch-sizes."""

from __future__ import annotations

import pytest

from tests.bench.conftest import load_script

inference_bench = load_script("inference")


@pytest.mark.parametrize(
    "flags",
    [["--batch-sizes", "1", "64"], ["--batch-sizes", "1,64"], ["--batch-sizes", "1,", "64"]],
)
def test_batch_sizes_take_commas_and_spaces(flags):
    assert inference_bench.parse_args(flags).batch_sizes == [1, 64]


def test_batch_sizes_default():
    assert inference_bench.parse_args([]).batch_sizes == [1, 32, 256, 1024]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-sizes", "0"], "argument --batch-sizes: batch size '0' is invalid"),
        (["--batch-sizes", "abc"], "argument --batch-sizes: batch size 'abc' is invalid"),
        (
            ["--batch-sizes", "1,99999999999"],
            "batch size '99999999999' is invalid: use at most 65536",
        ),
        (["--rounds", "0"], "argument --rounds: '0' is invalid: use an integer >= 1"),
        (["--threads", "0"], "argument --threads: '0' is invalid: use an integer >= 1"),
        (["--seconds", "0"], "argument --seconds: '0' is invalid: use a number of seconds > 0"),
        (["--seconds", "nan"], "argument --seconds: 'nan' is invalid"),
        (["--seed", "-1"], "argument --seed: -1 is invalid: use an integer from 0 to "),
        (["--seed", "1.5"], "argument --seed: '1.5' is invalid: use an integer"),
    ],
)
def test_bad_flag_exits_2(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        inference_bench.parse_args(flags)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_gives_every_default(capsys):
    with pytest.raises(SystemExit):
        inference_bench.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())

    for flag in ("--batch-sizes", "--threads", "--seconds", "--rounds", "--seed"):
        assert flag in text
    assert text.count("(default:") == 5


def test_thread_count_singular():
    assert inference_bench._count(1, "thread") == "1 thread"
    assert inference_bench._count(2, "thread") == "2 threads"
