"""Tests of the demo's flag checks, which run before any step, and of its closing file list."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.demo.run import RUN_FOLDER_CONTENTS, describe_run_folder, main


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "bogus"], "argument --format: invalid choice: 'bogus'"),
        (["--epochs", "0"], "invalid --epochs 0: use an integer >= 1"),
        (["--processes", "0"], "invalid --processes 0: use an integer >= 1"),
        (["--max-events", "0"], "invalid --max-events 0: use an integer >= 1"),
        (["--partitions", "0"], "invalid --partitions 0: use an integer >= 1"),
        (["--rate", "nan"], "invalid --rate nan: use a positive number"),
        (["--rate", "-5"], "invalid --rate -5.0: use a positive number"),
        (["--metrics-port", "70000"], "invalid --metrics-port 70000: use a port from 1 to 65535"),
    ],
)
def test_demo_bad_flag_exits_before_any_step(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), *flags])

    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert message in captured.err
    assert captured.out == ""
    assert not out.exists()


def test_demo_seed_help_shows_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])

    printed = " ".join(capsys.readouterr().out.split())
    assert "seed of data and training (default: 0)" in printed


def test_run_folder_list_names_every_file(tmp_path: Path) -> None:
    for name, _what in RUN_FOLDER_CONTENTS:
        if "." in name:
            (tmp_path / name).write_text("")
        else:
            (tmp_path / name).mkdir()

    listing = describe_run_folder(tmp_path).splitlines()

    assert len(listing) == len(RUN_FOLDER_CONTENTS) == 10
    for line, (name, what) in zip(listing, RUN_FOLDER_CONTENTS, strict=True):
        assert line.startswith(f"  {tmp_path / name}")
        assert line.endswith(f"  {what}")


def test_run_folder_list_skips_missing_files(tmp_path: Path) -> None:
    (tmp_path / "worker.log").write_text("")

    assert describe_run_folder(tmp_path).split() == [
        str(tmp_path / "worker.log"),
        "the",
        "worker",
        "pool's",
        "log",
    ]


def test_demo_data_args_reach_training_flags(tmp_path: Path) -> None:
    from ops.demo.run import data_flags, parse_args

    log = tmp_path / "clicks.tsv"
    config = parse_args(
        [
            "--data",
            str(log),
            "--format",
            "csv",
            "--data-args",
            "--user-col customer_id --time-unit ms",
        ]
    )

    flags = data_flags(config, log, synthetic=False)

    assert config.data_args == ("--user-col", "customer_id", "--time-unit", "ms")
    assert flags[:3] == [str(log), "--format", "csv"]
    assert flags[3:7] == ["--user-col", "customer_id", "--time-unit", "ms"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data-args", "--user-col u"], "--data-args needs --data"),
        (
            ["--data", "x.csv", "--data-args", "--epochs 3"],
            "invalid --data-args: --epochs is not a data flag of `hiertcn train`",
        ),
        (
            ["--data", "x.csv", "--data-args", "--model gru --out /tmp/x"],
            "invalid --data-args: --model and --out are not data flags of `hiertcn train`",
        ),
        (
            ["--data", "x.csv", "--data-args", "--model=gru --user-col u --lr 1 --out /tmp/x"],
            "invalid --data-args: --model, --lr and --out are not data flags",
        ),
        (
            ["--data", "x.csv", "--data-args", "--user-col u extra"],
            "invalid --data-args: unexpected argument extra: pass only data flags",
        ),
        (["--data", "x.csv", "--data-args", "--user-col 'u"], "invalid --data-args"),
        (
            ["--data", "x.csv", "--format", "csv", "--data-args", "--format jsonl"],
            "invalid --data-args: --format jsonl conflicts with the demo's own --format: pass "
            "--format jsonl to the demo instead (FORMAT=jsonl with make)",
        ),
        (["--data", "x.csv", "--data-args=--form=csv"], "--format csv conflicts with the demo"),
        (
            ["--data", "x.csv", "--data-args", "--split-seed 3"],
            "invalid --data-args: --split-seed 3 conflicts with the demo's fixed --split-seed 0",
        ),
    ],
)
def test_demo_bad_data_args_rejected(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ops.demo.run import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(flags)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_single_data_flag_after_equals() -> None:
    from ops.demo.run import parse_args

    config = parse_args(["--data", "x.csv", "--data-args=--no-header"])

    assert config.data_args == ("--no-header",)


def test_demo_empty_data_args_without_data() -> None:
    # `make demo` without DATA passes --data-args= with an empty value.
    from ops.demo.run import parse_args

    config = parse_args(["--data-args="])

    assert config.data_args == ()
