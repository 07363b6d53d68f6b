"""`hiertcn experiment`: the examples of its help run on the project's own data files."""

from __future__ import annotations

import shlex

import pytest

from hiertcn.cli import build_parser, main
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
    args.model = "hiertcn"
    model_config_from_args(args)
    train_config_from_args(args)
    data = data_config_from_args(args)
    for kind in args.splits.split(","):
        dataset = load_split(data, kind)
        assert dataset.test.num_targets > 0
