"""The `hiertcn` entry point: the -v flag and the logging level it sets."""

from __future__ import annotations

import argparse
import logging

import pytest

from hiertcn import cli, command_line


def test_verbose_help_names_levels():
    parser = cli.build_parser()
    verbose = next(action for action in parser._actions if "-v" in action.option_strings)
    assert "DEBUG" in verbose.help
    assert verbose.help.endswith("(default: INFO level)")
    assert "-vv" not in verbose.help


@pytest.mark.parametrize(("verbosity", "level"), [(0, logging.INFO), (1, logging.DEBUG)])
def test_verbosity_sets_documented_level(monkeypatch, verbosity, level):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: levels.append(kwargs["level"]))
    command_line.configure_logging(verbosity)
    assert levels == [level]


def test_log_format_names_process(monkeypatch):
    formats = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: formats.append(kwargs["format"]))
    command_line.configure_logging(0)
    assert formats == ["%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"]


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["data", "stats", "log.csv"], 0),
        (["data", "stats", "log.csv", "-v"], 1),
        (["data", "stats", "log.csv", "--verbose"], 1),
        (["-v", "data", "stats", "log.csv"], 1),
        (["data", "-v", "stats", "log.csv"], 1),
        (["-v", "data", "-v", "stats", "log.csv", "-v"], 3),
    ],
)
def test_verbose_accepted_after_subcommand(argv, verbosity):
    assert command_line.verbosity(cli.build_parser().parse_args(argv)) == verbosity


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Return the parser of every subcommand below `parser`, at any depth."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_subcommand_parsers(child)]
    return found


def test_every_subcommand_has_verbose():
    parser = cli.build_parser()
    subcommands = _subcommand_parsers(parser)
    assert {sub.prog for sub in subcommands} >= {"hiertcn data stats", "hiertcn train"}
    for subcommand in subcommands:
        assert "-v" in subcommand._option_string_actions, subcommand.prog


COLUMN_FLAGS = ("--user-col", "--item-col", "--time-col", "--event-type-col", "--impressions-col")


@pytest.mark.parametrize("command", [("train",), ("evaluate",), ("data", "stats")])
def test_column_flags_state_default(command):
    parser = cli.build_parser()
    for name in command:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    helps = {flag: parser._option_string_actions[flag].help for flag in COLUMN_FLAGS}
    for flag, text in helps.items():
        assert "(default: " in text, flag
    assert "the first of item, item_id, itemId" in helps["--item-col"]
    assert "position 2 of a csv file with --no-header" in helps["--time-col"]
    assert "taobao reads `behavior`" in helps["--event-type-col"]
