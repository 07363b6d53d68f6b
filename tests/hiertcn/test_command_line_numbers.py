"""Float flags: numbers in messages as the user typed them, and numbers a float cannot hold."""

from __future__ import annotations

import argparse

import pytest

from hiertcn import command_line
from hiertcn.cli import main
from tests.hiertcn.test_commands_train import train_argv

FLOAT_RANGE_FIX = "so write a number whose magnitude is from 4.9e-324 to 1.79e308"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (2.0, "2"),
        (-3.0, "-3"),
        (0.05, "0.05"),
        (1e-07, "1e-7"),
        (-2.5e-10, "-2.5e-10"),
        (1e20, "1e20"),
        (1.5e300, "1.5e300"),
        (5e-324, "5e-324"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (7, "7"),
    ],
)
def test_format_number_as_typed(value: float, expected: str) -> None:
    assert command_line.format_number(value) == expected


def test_format_flag_number_prefers_text() -> None:
    texts = {"--lr": "1E-7", "--dropout": "0.50"}

    assert command_line.format_flag_number(1e-7, "--lr", texts) == "1E-7"
    assert command_line.format_flag_number(0.5, "--dropout", texts) == "0.50"
    # A value changed after parsing, or a flag without text, falls back to format_number.
    assert command_line.format_flag_number(0.25, "--dropout", texts) == "0.25"
    assert command_line.format_flag_number(1e-7, "--margin", texts) == "1e-7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0.0),
        ("0e-400", 0.0),
        ("-0.0", 0.0),
        ("1e-320", 1e-320),
        ("1.7976931348623157e308", 1.7976931348623157e308),
        (" 2.5 ", 2.5),
        ("inf", float("inf")),
        ("-Infinity", float("-inf")),
    ],
)
def test_parse_float_flag_accepts(text: str, expected: float) -> None:
    assert command_line.parse_float_flag(text) == expected


@pytest.mark.parametrize(
    ("text", "read_as"),
    [
        ("1e-400", "0"),
        ("-1e-400", "0"),
        ("0.0001e-321", "0"),
        ("2e-324", "0"),
        ("1e400", "inf"),
        ("-1e400", "-inf"),
        ("1.8e308", "inf"),
    ],
)
def test_parse_float_flag_rejects_beyond_float(text: str, read_as: str) -> None:
    with pytest.raises(ValueError) as raised:
        command_line.parse_float_flag(text)

    assert str(raised.value) == (
        f"{text} is invalid: a 64-bit float reads it as {read_as}, {FLOAT_RANGE_FIX}"
    )


def test_parse_float_flag_rejects_word() -> None:
    with pytest.raises(ValueError) as raised:
        command_line.parse_float_flag("fast")

    assert str(raised.value) == "'fast' is invalid: use a number such as 0.5"


def test_store_float_records_text() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", action=command_line.StoreFloat, default=1e-3)
    parser.add_argument("--rate", action=command_line.StoreFloat)

    args = parser.parse_args(["--lr", " 1E-7", "--lr", "2e-7"])

    assert args.lr == 2e-7
    assert args.rate is None
    assert command_line.flag_texts(args) == {"--lr": "2e-7"}
    assert command_line.flag_texts(parser.parse_args([])) == {}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr=-1E-7"], "--lr -1E-7 is invalid: use a finite learning rate > 0"),
        (["--dropout", "1.50"], "--dropout 1.50 is invalid: use a rate in [0, 1)"),
        (["--gru-candidate-dropout", "1e0"], "--gru-candidate-dropout 1e0 is invalid"),
        (["--grad-clip=-2.0e-3"], "--grad-clip -2.0e-3 is invalid: use a finite norm > 0"),
        (
            ["--margin=-1e-7", "--loss", "hinge"],
            "--margin -1e-7 is invalid: use a finite margin",
        ),
        (
            ["--margin", "2e-7"],
            "--margin 2e-7 has no effect with --loss cross_entropy, because only --loss hinge",
        ),
    ],
)
def test_train_message_quotes_typed_number(tmp_path, capsys, flags, message):
    argv = train_argv(tmp_path / "absent.csv", tmp_path / "run", *flags)
    argv[argv.index("most_popular")] = "hiertcn"

    assert main(argv) == 2

    error = capsys.readouterr().err
    assert f"hiertcn: error: {message}" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("flag", "text", "read_as"),
    [
        ("--lr", "1e-400", "0"),
        ("--grad-clip", "1e999", "inf"),
        ("--dropout", "1e-999", "0"),
        ("--margin", "-5e400", "-inf"),
    ],
)
def test_train_number_beyond_float_rejected(tmp_path, capsys, flag, text, read_as):
    argv = train_argv(tmp_path / "absent.csv", tmp_path / "run", f"{flag}={text}")

    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line == (
        f"hiertcn train: error: argument {flag}: {text} is invalid: a 64-bit float reads "
        f"it as {read_as}, {FLOAT_RANGE_FIX}"
    )
    assert not (tmp_path / "run").exists()


def test_experiment_rate_quoted_as_typed(tmp_path, capsys):
    argv = ["experiment", "regularization", str(tmp_path / "absent.csv")]

    code = main([*argv, "--regularization-rate", "1.0e0", "--out", str(tmp_path / "out")])

    assert code == 2
    error = capsys.readouterr().err
    assert "--regularization-rate 1.0e0 is invalid: use a rate in (0, 1)" in error


def test_experiment_rate_beyond_float_rejected(tmp_path, capsys):
    argv = ["experiment", "regularization", str(tmp_path / "absent.csv")]

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--regularization-rate", "1e-400", "--out", str(tmp_path / "out")])

    assert exit_info.value.code == 2
    assert "argument --regularization-rate: 1e-400 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--checkpoint", "missing.pt", "--out", "bundle", "--session-gap", "1e-400"],
        ["train", "log.csv", "--lr", "1e400"],
    ],
)
def test_float_type_flags_reject_beyond_float(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is invalid: a 64-bit float reads it as" in err
    assert command_line.FLOAT_RANGE in err


@pytest.mark.parametrize("flag", ["--train-fraction", "--valid-fraction"])
def test_split_fraction_beyond_float_rejected(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "log.csv", f"{flag}=1e-400"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: 1e-400 is invalid: a 64-bit float reads it as 0" in (
        capsys.readouterr().err
    )


def test_ignored_model_flag_warning_shows_short_exponent() -> None:
    from hiertcn.models.config import flag_for

    assert flag_for("dropout", 1e-7) == "--dropout 1e-7"
    assert flag_for("dropout", 0.25) == "--dropout 0.25"
