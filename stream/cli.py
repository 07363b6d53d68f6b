"""The `hiertcn-stream` command: the Kafka worker, replay, a load producer and state maintenance.

Each subcommand lives in its own module that exposes `register(subparsers)`. This package runs on
ONNX Runtime alone and never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hiertcn import command_line
from statestore.errors import StateStoreError
from stream.errors import StreamError

logger = logging.getLogger(__name__)

# Modules whose `register(subparsers)` adds one subcommand each.
_COMMAND_MODULES = (
    "stream.commands.run",
    "stream.commands.replay",
    "stream.commands.produce",
    "stream.commands.changelog",
    "statestore.command",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    return command_line.build_parser(
        "hiertcn-stream",
        "Serve HierTCN recommendations from a Kafka interaction stream.",
        _COMMAND_MODULES,
        _verbose_help,
    )


# The -v help of the commands that read event records.
_RECORD_VERBOSE_HELP = (
    "log at DEBUG level, including the traceback of a reported error and, in replay and "
    "produce, each rejected record (default: INFO level)"
)
_VERBOSE_HELP = (
    "log at DEBUG level, including the traceback of a reported error (default: INFO level)"
)


def _verbose_help(subcommand: str) -> str:
    """Return the -v help of a subcommand name, or of the top level for ""."""
    return _RECORD_VERBOSE_HELP if subcommand in ("", "replay", "produce") else _VERBOSE_HELP


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hiertcn-stream` command and return its exit code."""
    parser = build_parser()
    args = command_line.parse_arguments(parser, argv)
    command_line.configure_logging(command_line.verbosity(args))
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
