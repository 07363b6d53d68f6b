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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def configure_logging(verbosity: int) -> None:
    """Set up the one logging configuration of the stream entry points."""
    level = (logging.INFO, logging.DEBUG)[min(max(verbosity, 0), 1)]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hiertcn-stream` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
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
