"""The `hiertcn` entry point: the -v flag and the logging level it sets."""

from __future__ import annotations

import logging

import pytest

from hiertcn import cli


def test_verbose_help_names_levels():
    parser = cli.build_parser()
    verbose = next(action for action in parser._actions if "-v" in action.option_strings)
    assert "DEBUG" in verbose.help
    assert "default: INFO" in verbose.help
    assert "-vv" not in verbose.help


@pytest.mark.parametrize(("verbosity", "level"), [(0, logging.INFO), (1, logging.DEBUG)])
def test_verbosity_sets_documented_level(monkeypatch, verbosity, level):
    levels = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: levels.append(kwargs["level"]))
    cli.configure_logging(verbosity)
    assert levels == [level]
