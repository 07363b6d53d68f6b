"""The `hiertcn-stream` parser: options that every subcommand shares."""

from __future__ import annotations

import argparse

import pytest

from hiertcn.command_line import verbosity
from statestore.errors import ReadOnlyStoreError, StateStoreError
from stream.cli import build_parser, main


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


def test_verbose_help_mentions_tracebacks() -> None:
    top = build_parser()
    for path, parser in [("", top), *_subcommand_parsers(top)]:
        (verbose,) = [action for action in parser._actions if "-v" in action.option_strings]
        assert "traceback of a reported error" in verbose.help, f"hiertcn-stream {path} -v"
        assert verbose.help.endswith("(default: INFO level)"), f"hiertcn-stream {path} -v"


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


@pytest.mark.parametrize(
    ("argv", "usage", "unknown"),
    [
        (["run", "--brokers", "h:1", "--bundle", "b", "--frobnicate"], "hiertcn-stream run",
         "--frobnicate"),
        (["produce", "--events", "e", "--brokers", "h:1", "--topic", "t", "--speed", "5"],
         "hiertcn-stream produce", "--speed 5"),
        (["replay", "--events", "e", "--bundle", "b", "--brokers", "x"], "hiertcn-stream replay",
         "--brokers x"),
        (["state", "--state-dir", "s", "stats", "--zz"], "hiertcn-stream state stats", "--zz"),
    ],
)  # fmt: skip
def test_unknown_flag_shows_subcommand_usage(
    argv: list[str], usage: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"usage: {usage} [-h]")
    assert f"{usage}: error: unrecognized arguments: {unknown}\n" in err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ReadOnlyStoreError("LMDB open failed in state store state: Permission denied"), 2),
        (StateStoreError("LMDB read failed in state store state: Input/output error"), 1),
    ],
)
def test_main_exit_code_of_state_store_error(
    error: StateStoreError,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise error

    parser = build_parser()
    args = parser.parse_args(["state", "--state-dir", "state", "stats"])
    monkeypatch.setattr("hiertcn.command_line.parse_arguments", lambda parser, argv: args)
    args.func = fail

    returned = main(["state", "--state-dir", "state", "stats"])

    err = capsys.readouterr().err
    assert returned == code
    assert err == f"hiertcn-stream: error: {error}\n"


def test_run_help_says_port_0_turns_health_off(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert "/healthz and /readyz probes; 0 turns the server off, health endpoints included" in (
        help_text
    )
    assert "--health-stall-seconds SECONDS" in help_text
    assert "(env HIERTCN_HEALTH_STALL_SECONDS; default 300.0)" in help_text
