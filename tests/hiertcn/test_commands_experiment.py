"""`hiertcn experiment`: the examples of its help run on the project's own data files."""

from __future__ import annotations

import shlex

import pytest

from hiertcn.cli import build_parser, main
from hiertcn.commands.experiment import reject_unread_flags
from hiertcn.commands.train import model_config_from_args, train_config_from_args
from hiertcn.data.options import data_config_from_args
from hiertcn.experiments.runner import load_split


def help_examples(capsys) -> list[list[str]]:
    """Return the `hiertcn experiment` command lines of the help, as argument lists."""
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = capsys.readouterr().out.replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("hiertcn experiment ")]


def test_taobao_example_loads_both_splits(capsys, shared_data):
    examples = [argv for argv in help_examples(capsys) if "UserBehavior_head.csv" in argv]
    assert len(examples) == 1
    argv = examples[0]
    argv[argv.index("UserBehavior_head.csv")] = str(
        shared_data / "taobao-userbehavior-head" / "UserBehavior_head.csv"
    )
    args = build_parser().parse_args(argv)
    assert args.experiment == "compare"
    reject_unread_flags(args)  # as `run` does: the unread flags get their defaults
    args.model = "hiertcn"
    model_config_from_args(args)
    train_config_from_args(args)
    data = data_config_from_args(args)
    for kind in args.splits.split(","):
        dataset = load_split(data, kind)
        assert dataset.test.num_targets > 0


# Flags that a subcommand does not read.


@pytest.mark.parametrize(
    ("experiment", "flags", "reason"),
    [
        ("losses", ["--loss", "bpr"], "it trains with each loss in turn"),
        ("losses", ["--models", "gru"], "it trains --model (default: hiertcn) in each variant"),
        ("losses", ["--splits", "warm"], "it trains on the cold-start split only"),
        ("regularization", ["--dropout", "0.3"], "each variant sets it"),
        ("regularization", ["--gru-candidate-dropout", "0.3"], "each variant sets it"),
        ("regularization", ["--batch-norm"], "each variant sets it"),
        ("regularization", ["--splits", "warm"], "it trains on the cold-start split only"),
        ("compare", ["--model", "gru"], "it trains each model of --models"),
        ("compare", ["--regularization-rate", "0.3"], "only the regularization comparison"),
        ("epoch-times", ["--splits", "warm"], "it trains on the cold-start split only"),
        ("analyses", ["--model", "gru"], "it trains each model of --models"),
        ("compare", ["--split", "warm"], "it trains on each split that --splits names"),
        ("epoch-times", ["--split", "warm"], "it trains on the cold-start split only"),
        ("analyses", ["--split", "warm"], "it trains on the cold-start split only"),
        ("losses", ["--split", "warm"], "it trains on the cold-start split only"),
        ("regularization", ["--split", "warm"], "it trains on the cold-start split only"),
        ("all", ["--split", "warm"], "the model comparison trains on each split that --splits"),
        ("all", ["--split", "cold"], "the other experiments on the cold-start split only"),
    ],
)
def test_unread_flag_rejected(tmp_path, capsys, experiment, flags, reason):
    out = tmp_path / "out"
    argv = ["experiment", experiment, str(tmp_path / "absent.csv"), *flags, "--out", str(out)]

    code = main(argv)

    error = capsys.readouterr().err
    assert code == 2
    assert f"`hiertcn experiment {experiment}` does not read {flags[0]}, because" in error
    assert reason in error
    assert f"remove {flags[0]}" in error
    assert not out.exists()


@pytest.mark.parametrize("experiment", ["compare", "epoch-times", "analyses", "regularization"])
def test_loss_flag_unread_by_loss_rejected(tmp_path, capsys, experiment):
    out = tmp_path / "out"
    argv = ["experiment", experiment, str(tmp_path / "absent.csv"), "--negatives", "5"]

    code = main([*argv, "--out", str(out)])

    error = capsys.readouterr().err
    assert code == 2
    assert "--negatives 5 has no effect with --loss cross_entropy" in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("experiment", "hidden"),
    [
        ("losses", ("--loss ", "--models ", "--split ", "--splits ", "--regularization-rate ")),
        ("regularization", ("--dropout ", "--gru-candidate-dropout ", "--batch-norm ", "--split ")),
        ("compare", ("--model ", "--regularization-rate ", "--split ")),
        ("all", ("--split ",)),
    ],
)
def test_help_leaves_out_unread_flags(capsys, experiment, hidden):
    with pytest.raises(SystemExit):
        main(["experiment", experiment, "--help"])
    options = capsys.readouterr().out.split("options:")[1]

    for flag in hidden:
        assert f"  {flag}" not in options
    assert "--force" in options


def test_all_reads_model_and_loss_flags(tmp_path):
    argv = ["experiment", "all", "log.csv", "--loss", "bpr", "--dropout", "0.1", "--batch-norm"]
    args = build_parser().parse_args([*argv, "--model", "gru", "--out", str(tmp_path)])

    assert args.loss == "bpr"
    assert args.dropout == 0.1
    assert args.batch_norm is True
    assert args.model == "gru"


# Names of --models and --splits.


@pytest.mark.parametrize(
    ("experiment", "flags", "message"),
    [
        (
            "epoch-times",
            ["--models", "most_popular,gru"],
            "--models most_popular,gru has no hiertcn, but epoch-times gives every time and size "
            "as a ratio to HierTCN: add hiertcn to --models",
        ),
        ("all", ["--models", "gru,tcn"], "--models gru,tcn has no hiertcn"),
        ("compare", ["--models", "gru,gru"], "--models gru,gru names gru more than once"),
        ("compare", ["--splits", "cold,cold"], "--splits cold,cold names cold more than once"),
        ("compare", ["--splits", "hot"], "--splits names unknown splits hot"),
        ("analyses", ["--models", "nosuch"], "--models names unknown models nosuch"),
    ],
)
def test_bad_model_or_split_names_rejected(tmp_path, capsys, experiment, flags, message):
    out = tmp_path / "out"
    argv = ["experiment", experiment, str(tmp_path / "absent.csv"), *flags, "--out", str(out)]

    code = main(argv)

    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# --out checks, which run before the log is read.


def test_out_that_is_file_rejected(tmp_path, capsys):
    out = tmp_path / "ratings.csv"
    out.write_text("user,item,ts\n", encoding="utf-8")
    log = tmp_path / "absent.csv"  # a read of the log would fail with another message

    code = main(["experiment", "compare", str(log), "--out", str(out)])

    error = capsys.readouterr().err
    assert code == 2
    assert f"--out {out} is a file: pass a folder" in error
    assert "Traceback" not in error


def test_out_inside_file_rejected(tmp_path, capsys):
    parent = tmp_path / "ratings.csv"
    parent.write_text("user,item,ts\n", encoding="utf-8")

    code = main(["experiment", "compare", str(tmp_path / "absent.csv"), "--out", f"{parent}/x"])

    assert code == 2
    assert f"is inside the file {parent}: pass a folder" in capsys.readouterr().err
