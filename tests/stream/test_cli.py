"""The `hiertcn-stream` parser: options that every subcommand shares."""

from __future__ import annotations

import argparse

import pytest

from stream.cli import build_parser, verbosity


def _subcommand_parsers(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Return (command path, parser) of every subcommand below `parser`, nested ones included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                path = f"{prefix} {name}".strip()
                found.append((path, child))
                found.extend(_subcommand_parsers(child, path))
    return found


def test_every_subcommand_accepts_verbose() -> None:
    parsers = _subcommand_parsers(build_parser())

    assert {"replay", "produce", "run", "state", "state stats"} <= {path for path, _ in parsers}
    for path, parser in parsers:
        options = {option for action in parser._actions for option in action.option_strings}
        assert "-v" in options, f"hiertcn-stream {path} does not accept -v"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["replay", "--events", "e.jsonl", "--bundle", "b"], 0),
        (["-v", "replay", "--events", "e.jsonl", "--bundle", "b"], 1),
        (["replay", "--events", "e.jsonl", "--bundle", "b", "-v"], 1),
        (["-v", "replay", "-v", "--events", "e.jsonl", "--bundle", "b"], 2),
        (["-v", "state", "-v", "--state-dir", "d", "stats", "-v"], 3),
    ],
)
def test_verbose_counted_at_every_level(argv: list[str], expected: int) -> None:
    args = build_parser().parse_args(argv)

    assert verbosity(args) == expected
