"""The `hiertcn-stream` command: the Kafka worker, replay, a load producer and state maintenance.

Each subcommand lives in its own module that exposes `register(subparsers)`. This package runs on
ONNX Runtime alone and never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from statestore.errors import StateStoreError
from stream.errors import StreamError

logger = logging.getLogger(__name__)

# Prefix of the namespace attributes that count `-v` at each parser level.
_VERBOSE_PREFIX = "verbose_"

# Modules whose `register(subparsers)` adds one subcommand each.
_COMMAND_MODULES = (
    "stream.commands.run",
    "stream.commands.replay",
    "stream.commands.produce",
    "statestore.command",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="hiertcn-stream",
        description="Serve HierTCN recommendations from a Kafka interaction stream.",
    )
    add_verbose_option(parser, depth=0)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    _add_verbose_to_subcommands(parser, depth=1)
    return parser


# The -v help of the commands that read event records.
_RECORD_VERBOSE_HELP = (
    "log at DEBUG level, including the traceback of a reported error and, in replay and "
    "produce, each rejected record (default: INFO)"
)
_VERBOSE_HELP = "log at DEBUG level, including the traceback of a reported error (default: INFO)"


def add_verbose_option(
    parser: argparse.ArgumentParser, depth: int, help_text: str = _RECORD_VERBOSE_HELP
) -> None:
    """Add `-v/--verbose` to one parser level, counted in the attribute `verbose_<depth>`.

    argparse copies a subcommand's namespace over its parent's, so each level needs its own
    attribute, or a later level's count would replace an earlier one. `verbosity` adds them up.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        dest=f"{_VERBOSE_PREFIX}{depth}",
        action="count",
        default=0,
        help=help_text,
    )


def _add_verbose_to_subcommands(parser: argparse.ArgumentParser, depth: int) -> None:
    """Add `-v` to every subcommand below `parser`, so it may follow any subcommand name."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        # An alias maps to the same parser object, which must get the option only once.
        children = {id(child): (name, child) for name, child in action.choices.items()}
        for name, child in children.values():
            reads_records = name in ("replay", "produce")
            add_verbose_option(
                child, depth, _RECORD_VERBOSE_HELP if reads_records else _VERBOSE_HELP
            )
            _add_verbose_to_subcommands(child, depth + 1)


def verbosity(args: argparse.Namespace) -> int:
    """Return the number of `-v` flags given before and after the subcommand names."""
    return sum(value for name, value in vars(args).items() if name.startswith(_VERBOSE_PREFIX))


def configure_logging(verbosity: int) -> None:
    """Set up the one logging configuration of the stream entry points."""
    level = (logging.INFO, logging.DEBUG)[min(max(verbosity, 0), 1)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv`, and exit 2 with the usage of the given subcommand for an unknown flag.

    argparse hands a subcommand's unknown arguments up to the top-level parser, whose error
    would show the top-level usage instead.
    """
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def chosen_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """Return the parser of the innermost subcommand named in `args`, or `parser` itself."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        name = getattr(args, action.dest, None) if action.dest != argparse.SUPPRESS else None
        if name in action.choices:
            return chosen_parser(action.choices[name], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hiertcn-stream` command and return its exit code."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    configure_logging(verbosity(args))
    try:
        return int(args.func(args) or 0)
    except (StreamError, StateStoreError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"hiertcn-stream: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("hiertcn-stream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
